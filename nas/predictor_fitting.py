"""The measured half of the NAS search: sampled architectures measured for real (held-out
accuracy, cost from the jaxpr, ONNX latency timed in interleaved rounds, twice for a
test-retest tau), every (position, option) block embedded as a
graph (with its NSR and position), and the predictors to compare (GNN vs baselines), judged
over many random splits by ``nas.predictor_evaluation``. ``experiments/nas_search.py`` runs
it between distillation and NSGA-II.
"""
from typing import Callable, Dict, List, Tuple

import jax.numpy as jnp
import numpy as np

from nas import architecture, assembled_training, block_graph, predictors


def held_out_accuracies(library, arch, dataset, measure_cfg) -> Dict[str, float]:
    """Validation accuracy (first ``eval_limit`` images) as assembled and, with
    ``measure.target = "recalibrated"``, with the students' BatchNorm statistics
    recalibrated on the network's own activations (``recalibration_batches`` forward
    passes); ``accuracy`` is the predictors' target, the one ``measure.target`` names."""
    out = {"assembled_accuracy": architecture.evaluate(library, arch, dataset, "validation",
                                                       measure_cfg.eval_limit)}
    target = measure_cfg.get("target", "assembled")
    if target == "recalibrated":
        variables = assembled_training.recalibrated_block_variables(
            library, arch, dataset, measure_cfg.get("recalibration_batches", 30),
            measure_cfg.get("recalibration_batch_size", 128))
        out["recalibrated_accuracy"] = architecture.evaluate(
            library, arch, dataset, "validation", measure_cfg.eval_limit, variables=variables)
    elif target != "assembled":
        raise ValueError(f"measure.target={target!r}: 'assembled' or 'recalibrated'")
    return {**out, "accuracy": out[f"{target}_accuracy"]}


def measure_architectures(library, archs, dataset, cfg, runner, with_latency,
                          log=print) -> List[dict]:
    """Held-out accuracy (``held_out_accuracies``) and cost of every architecture; those
    marked in ``with_latency`` are exported once and then timed together
    (``attach_latencies``)."""
    rows = []
    for k, arch in enumerate(archs):
        rows.append({"arch": list(arch),
                     **held_out_accuracies(library, arch, dataset, cfg.measure),
                     "block_nsr": library.per_block_nsr(arch).tolist(),
                     **architecture.cost(library, arch)})
        if (k + 1) % 10 == 0 or k + 1 == len(archs):
            log(f"evaluated {k + 1}/{len(archs)} architectures")
    exported = {k: architecture.export_model(library, arch, dataset.image_shape,
                                              runner=runner)
                for k, arch in enumerate(archs) if with_latency[k]}
    attach_latencies(rows, exported, runner, cfg.measure, cfg.seed, log)
    return rows


def attach_latencies(rows: List[dict], exported: Dict[int, Tuple], runner, measure_cfg,
                     seed: int, log=print) -> List[dict]:
    """``exported``: ``{row index: (model in the runner's format, export fields)}``. All those models are timed
    side by side (``architecture.measure_latencies``: ``measure_cfg.rounds`` interleaved
    rounds of ``measure_cfg.runs`` runs, twice, the second pass shuffled) and each row gets
    its export fields and latencies (``latency_ms`` is the p10); the other rows get none."""
    if not exported:
        return rows
    log(f"timing {len(exported)} architectures in 2 x {measure_cfg.rounds} interleaved rounds")
    timed = architecture.measure_latencies(runner, [m for m, _ in exported.values()],
                                           measure_cfg.rounds, measure_cfg.runs, seed)
    for k, (_, fields), latency in zip(exported, exported.values(), timed):
        rows[k].update({**fields, **latency})
    log(f"latency test-retest Kendall tau {architecture.retest_tau(rows)}")
    return rows


def build_graphs(library, dataset):
    """One batched GraphsTuple of every (position, option) block, each carrying its measured
    NSR and position as graph-level features, and the index table ``[p][k] -> graph``."""
    graphs, table = [], []
    n_positions = len(library.space.positions)
    for p, index in enumerate(library.space.positions):
        x = jnp.zeros((1,) + tuple(library.blocks[index].in_shape[1:]), jnp.float32)
        row = []
        for option in library.options[p]:
            row.append(len(graphs))
            graph = block_graph.block_graph(option.fn, option.variables, x)
            graphs.append(block_graph.with_block_features(graph, option.val_nsr, p,
                                                          n_positions))
        table.append(row)
    return block_graph.batch_graphs(graphs), table


def predictor_factories(library, graphs, table, rows, cfg) -> Dict[str, Dict[str, Callable]]:
    """Per target, the predictors to compare as factories (fresh, unfitted instances): the
    GNN, DONNA's linear model on per-block NSR, the one-hot MLP, and the FLOPs baseline."""
    pcfg = cfg.predictor

    def gnn(log_target):
        return lambda: predictors.GraphPredictor(
            graphs, table, log_target=log_target, hidden=pcfg.hidden, embed_dim=pcfg.embed_dim,
            layers=pcfg.layers, steps=pcfg.steps, learning_rate=pcfg.learning_rate)

    flops_of = {tuple(r["arch"]): r["flops"] for r in rows}

    def log_flops(arch):
        return [np.log(flops_of.get(tuple(arch)) or architecture.cost(library, arch)["flops"])]

    def flops(log_target):
        return lambda: predictors.LinearOnFeatures(log_flops, log_target=log_target)

    def onehot(log_target):
        return lambda: predictors.OneHotMLP(library.space.sizes, log_target=log_target,
                                            steps=pcfg.steps)

    def donna_linear():
        return predictors.LinearOnFeatures(library.per_block_nsr)

    return {
        "accuracy": {"gnn": gnn(False), "donna_linear_nsr": donna_linear,
                     "onehot_mlp": onehot(False), "flops": flops(False)},
        "latency_ms": {"gnn": gnn(True), "onehot_mlp": onehot(True), "flops": flops(True)},
        "peak_activation_bytes": {"gnn": gnn(True), "flops": flops(True)},
    }
