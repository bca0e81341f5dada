"""The measured half of the NAS search: sampled architectures measured for real (held-out
accuracy, cost from the jaxpr, ONNX latency), every (position, option) block embedded as a
graph, and predictors (GNN vs baselines) fitted on some architectures and judged on the
rest. ``experiments/nas_search.py`` runs it between distillation and NSGA-II.
"""
from typing import Dict, List

import jax.numpy as jnp
import numpy as np

from nas import architecture, block_graph, predictors


def measure_architectures(library, archs, dataset, cfg, runner, with_latency,
                          log=print) -> List[dict]:
    """Held-out accuracy, cost and (optionally) measured latency of every architecture."""
    rows = []
    for k, arch in enumerate(archs):
        row = {"arch": list(arch),
               "accuracy": architecture.evaluate(library, arch, dataset, "validation",
                                                 cfg.measure.eval_limit),
               "block_nsr": library.per_block_nsr(arch).tolist(),
               **architecture.cost(library, arch)}
        if with_latency[k]:
            row.update(architecture.export_and_measure(library, arch, dataset.image_shape,
                                                       runner))
        rows.append(row)
        if (k + 1) % 10 == 0 or k + 1 == len(archs):
            log(f"measured {k + 1}/{len(archs)} architectures")
    return rows


def build_graphs(library, dataset):
    """One batched GraphsTuple of every (position, option) block, and the index table."""
    graphs, table = [], []
    for p, index in enumerate(library.space.positions):
        x = jnp.zeros((1,) + tuple(library.blocks[index].in_shape[1:]), jnp.float32)
        row = []
        for option in library.options[p]:
            row.append(len(graphs))
            graphs.append(block_graph.block_graph(option.fn, option.variables, x))
        table.append(row)
    return block_graph.batch_graphs(graphs), table


def fit_predictors(library, graphs, table, train_rows, test_rows, cfg,
                   log=print) -> Dict:
    """GNN predictors and baselines, judged on held-out architectures."""
    pcfg = cfg.predictor
    gnn = lambda log: predictors.GraphPredictor(graphs, table, log_target=log,
                                                hidden=pcfg.hidden, embed_dim=pcfg.embed_dim,
                                                layers=pcfg.layers, steps=pcfg.steps,
                                                learning_rate=pcfg.learning_rate)
    nsr = lambda a: library.per_block_nsr(a)
    flops_of = {tuple(r["arch"]): r["flops"] for r in train_rows + test_rows}
    log_flops = lambda a: [np.log(flops_of.get(tuple(a)) or
                                  architecture.cost(library, a)["flops"])]
    candidates = {
        "accuracy": {"gnn": gnn(False), "donna_linear_nsr": predictors.LinearOnFeatures(nsr),
                     "onehot_mlp": predictors.OneHotMLP(library.space.sizes,
                                                        steps=pcfg.steps),
                     "flops": predictors.LinearOnFeatures(log_flops)},
        "latency_ms": {"gnn": gnn(True), "onehot_mlp": predictors.OneHotMLP(
            library.space.sizes, log_target=True, steps=pcfg.steps),
            "flops": predictors.LinearOnFeatures(log_flops, log_target=True)},
        "peak_activation_bytes": {"gnn": gnn(True), "flops": predictors.LinearOnFeatures(
            log_flops, log_target=True)},
    }
    fitted, report = {}, {}
    for target, models in candidates.items():
        train = [r for r in train_rows if r.get(target) is not None]
        test = [r for r in test_rows if r.get(target) is not None]
        if len(train) < 4 or len(test) < 3:
            continue
        report[target] = {"train": len(train), "test": len(test)}
        for name, model in models.items():
            model.fit([tuple(r["arch"]) for r in train], np.array([r[target] for r in train]))
            pred = model.predict([tuple(r["arch"]) for r in test])
            report[target][name] = predictors.ranking_metrics(pred, [r[target] for r in test])
            fitted[(target, name)] = model
        log(f"{target}: " + ", ".join(f"{n} tau={m['kendall_tau']:.3f}"
                                          for n, m in report[target].items()
                                          if isinstance(m, dict)))
    return {"fitted": fitted, "report": report}
