"""The DONNA-style NAS experiment, end to end (``python run.py --exp=nas_fmnist``).

teacher -> blocks -> search space -> blockwise distillation of every student (in parallel,
resumable) -> N sampled architectures assembled and measured for real (held-out accuracy,
FLOPs, peak activation memory from the jaxpr, ONNX latency on the runner) -> predictors
(GNN vs baselines) fitted on part of them and judged on the rest -> NSGA-II on the
predictors under a latency budget -> the front assembled, evaluated on the test split,
exported and measured -> the chosen architecture fine-tuned end to end by distillation
(the claim: blockwise distillation needs no fine-tune) -> results.json, report.md and a
Pareto PNG in the workdir. Every stage caches its output in the workdir, so a re-run
after an interruption continues where it stopped.
"""
import json
import os
import time
from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

import ml_collections

from core import config as config_lib, teacher as teacher_lib
from export.runners import get_runner
from models import zoo
from nas import architecture, block_graph, distill, evolution, finetune, pareto_plot
from nas import int8_friendliness, predictors, search_space, teacher_blocks


def _log(msg):
    print(f"[nas {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_teacher(cfg):
    """(fn, variables, dataset, summary) from the cached trained teacher or an untrained zoo
    model (``cfg.teacher_source = "untrained"``, for smoke tests)."""
    tcfg = cfg.teacher
    dataset = teacher_lib.load_data(tcfg)
    if cfg.get("teacher_source", "trained") == "trained":
        module, variables, summary = teacher_lib.get_teacher(tcfg, show_progress=False)
    else:
        module = teacher_lib.build_module(tcfg.model, tcfg.get("tiny", False))
        variables = module.init(jax.random.key(0), jnp.zeros((1,) + dataset.image_shape))
        summary = {"model": tcfg.model, "trained": False}
    fn = lambda v, x: module.apply(v, x, train=False)
    return fn, variables, dataset, summary


def split_teacher(cfg, fn, variables, dataset):
    x = jnp.zeros((cfg.distill.batch_size,) + dataset.image_shape, jnp.float32)
    if cfg.blocks == "auto":
        return teacher_blocks.split_at_cut_points(fn, variables, x)
    return teacher_blocks.split_by_modules(fn, variables, x, list(cfg.blocks))


def _cached_json(path, compute):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    value = compute()
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)
    return value


def stage_hash(cfg, *sections: str) -> str:
    """Hash of the config sections a cached stage depends on: a rerun with other settings
    recomputes that stage instead of reading a stale file from the same workdir."""
    return config_lib.config_hash(ml_collections.ConfigDict(
        {name: cfg.get(name) for name in sections}),
        exclude=("show_progress", "experiment_name", "experiment_path"))


SAMPLED_SECTIONS = ("seed", "device", "teacher", "teacher_source", "blocks", "space", "distill",
                    "measure")


def sampled_path(cfg, workdir: str) -> str:
    """Where the measured sampled architectures of this config are cached."""
    return os.path.join(workdir, f"sampled-{stage_hash(cfg, *SAMPLED_SECTIONS)}.json")


def finetune_dir(cfg, workdir: str, arch) -> str:
    """The claim-check fine-tune's checkpoints: per students and architecture, so a rerun
    that chooses another architecture never resumes from the wrong one."""
    key = stage_hash(cfg, *SAMPLED_SECTIONS, "finetune")
    return os.path.join(workdir, "finetune", f"{key}-{'-'.join(map(str, arch))}")


def measure_architectures(library, archs, dataset, cfg, runner, with_latency) -> List[dict]:
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
            _log(f"measured {k + 1}/{len(archs)} architectures")
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


def fit_predictors(library, graphs, table, train_rows, test_rows, cfg) -> Dict:
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
        _log(f"{target}: " + ", ".join(f"{n} tau={m['kendall_tau']:.3f}"
                                          for n, m in report[target].items()
                                          if isinstance(m, dict)))
    return {"fitted": fitted, "report": report}


def main(cfg, workdir):
    t0 = time.time()
    os.makedirs(workdir, exist_ok=True)
    timings = {}
    fn, variables, dataset, teacher_summary = load_teacher(cfg)
    blocks = split_teacher(cfg, fn, variables, dataset)
    space = search_space.build_space(blocks, cfg.space)
    _log(f"{len(blocks)} teacher blocks; searching positions {space.positions} with "
         f"{space.sizes} options ({space.size:.3g} architectures, "
         f"{len(space.students())} students)")
    mesh = distill.student_mesh()
    students = distill.distill_space(space, blocks, dataset, cfg.distill,
                                     os.path.join(workdir, "distill"), mesh, cfg.show_progress)
    timings["distill_s"] = time.time() - t0
    library = architecture.BlockLibrary(blocks, space, students)
    runner = get_runner(cfg.device, runs=cfg.measure.runs, warmup=cfg.measure.warmup)

    rng = np.random.default_rng(cfg.seed)
    archs = space.sample(rng, cfg.measure.architectures, include_teacher=True)
    with_latency = [k < cfg.measure.latency_architectures for k in range(len(archs))]
    t1 = time.time()
    rows = _cached_json(sampled_path(cfg, workdir), lambda: measure_architectures(
        library, archs, dataset, cfg, runner, with_latency))
    timings["measure_s"] = time.time() - t1
    n_train = int(len(rows) * cfg.predictor.train_fraction)
    order = np.random.default_rng(cfg.seed + 1).permutation(len(rows))
    train_rows = [rows[i] for i in order[:n_train]]
    test_rows = [rows[i] for i in order[n_train:]]

    t2 = time.time()
    graphs, table = build_graphs(library, dataset)
    preds = fit_predictors(library, graphs, table, train_rows, test_rows, cfg)
    # The search uses predictors refitted on every measured architecture.
    acc_model = preds["fitted"][("accuracy", "gnn")].fit(
        [tuple(r["arch"]) for r in rows], np.array([r["accuracy"] for r in rows]))
    lat_rows = [r for r in rows if r.get("latency_ms") is not None]
    lat_model = preds["fitted"][("latency_ms", "gnn")].fit(
        [tuple(r["arch"]) for r in lat_rows], np.array([r["latency_ms"] for r in lat_rows]))
    timings["predictors_s"] = time.time() - t2

    teacher_row = rows[0]                     # the all-teacher architecture is sampled first
    budget = cfg.search.latency_budget * teacher_row["latency_ms"]
    columns = [lambda a: -acc_model.predict(a), lat_model.predict]
    int8_profile = cfg.search.get("int8_profile", "")
    if int8_profile:                          # optional third objective: lint penalties
        penalties = int8_friendliness.option_penalties(library, dataset, int8_profile)
        columns.append(lambda a: int8_friendliness.architecture_penalty(penalties, a))
    objectives = lambda a: np.stack([c(a) for c in columns], 1)  # noqa: E731
    t3 = time.time()
    result = evolution.nsga2(space.sizes, objectives, cfg.search.population,
                             cfg.search.generations, seed=cfg.seed,
                             violation=lambda a: np.maximum(lat_model.predict(a) - budget, 0),
                             initial=[tuple(r["arch"]) for r in rows])
    front = result.front[:: max(1, len(result.front) // cfg.search.measure_front)]
    front = list(dict.fromkeys(front + result.front[:1]))[:cfg.search.measure_front + 1]
    measured_front = []
    for k, arch in enumerate(front):
        fn_a, vars_a = architecture.assemble(library, arch)
        row = {"arch": list(arch), "choices": [c.key for c in space.choices(arch)],
               "predicted_accuracy": float(acc_model.predict([arch])[0]),
               "predicted_latency_ms": float(lat_model.predict([arch])[0]),
               **({"int8_penalty": float(columns[2]([arch])[0])} if int8_profile else {}),
               "test_accuracy": architecture.evaluate(library, arch, dataset, "test"),
               **architecture.cost(library, arch),
               **architecture.export_and_measure(library, arch, dataset.image_shape, runner,
                                                 os.path.join(workdir, f"front{k}.onnx"),
                                                 parity=True)}
        measured_front.append(row)
    timings["search_s"] = time.time() - t3
    teacher_arch = space.teacher()
    teacher_final = {"test_accuracy": architecture.evaluate(library, teacher_arch, dataset,
                                                            "test"),
                     **architecture.cost(library, teacher_arch),
                     **architecture.export_and_measure(library, teacher_arch,
                                                       dataset.image_shape, runner)}
    chosen = max(measured_front, key=lambda r: (r["latency_ms"] <= budget,
                                                r["predicted_accuracy"]))
    t4 = time.time()
    claim = finetune.claim_check(library, tuple(chosen["arch"]), fn, variables, dataset,
                                 cfg.finetune, finetune_dir(cfg, workdir, chosen["arch"]))
    timings["finetune_s"] = time.time() - t4
    png = pareto_plot.plot_fronts(rows, measured_front, teacher_final,
                                  os.path.join(workdir, "pareto.png"), budget)
    timings["total_s"] = time.time() - t0
    results = {"teacher": teacher_summary, "teacher_measured": teacher_final,
               "blocks": [{"name": b.name, "in": b.in_shape[1:], "out": b.out_shape[1:]}
                          for b in blocks],
               "space": space.as_dict(), "space_size": space.size,
               "students": {f"{p}:{c.key}": s.val_nsr for (p, c), s in students.items()},
               "predictors": preds["report"], "latency_budget_ms": budget,
               "search_history": result.history, "front": measured_front, "chosen": chosen,
               "claim_check": claim, "pareto_png": png, "timings": timings,
               "device": cfg.device, "jax_devices": jax.device_count(),
               "int8_profile": int8_profile,
               "int8_penalties": (int8_friendliness.describe(library, penalties)
                                  if int8_profile else {}),
               "config_hash": stage_hash(cfg, *cfg.keys()),
               "sampled_path": sampled_path(cfg, workdir)}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    _log(f"done in {timings['total_s'] / 60:.1f} min: chosen {chosen['choices']} "
         f"test acc {chosen['test_accuracy']:.4f} at {chosen['latency_ms']:.3f} ms "
         f"(teacher {teacher_final['test_accuracy']:.4f} at {teacher_final['latency_ms']:.3f} ms)")
    return results


__all__ = ["main", "stage_hash", "sampled_path", "load_teacher", "split_teacher", "measure_architectures", "build_graphs",
           "fit_predictors"]
