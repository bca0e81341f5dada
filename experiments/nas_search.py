"""The DONNA-style NAS experiment, end to end (``python run.py --exp=nas_fmnist``).

teacher -> blocks -> search space -> blockwise distillation of every student (in parallel,
resumable) -> N sampled architectures assembled and measured for real (held-out accuracy,
FLOPs, peak activation memory from the jaxpr, ONNX latency on the runner: all timed together
in interleaved rounds, twice, the second pass shuffled, for ``retest_tau``) -> predictors
(GNN vs baselines) judged over ``predictor.splits`` random train/test splits (Kendall tau
mean +- sd), the GNNs then fitted on every sample -> NSGA-II on the predictors under a
latency budget -> the front assembled, evaluated on the test split, exported and timed
together with the teacher in one set of interleaved rounds -> the chosen architecture
fine-tuned end to end by distillation (the claim: blockwise distillation needs no fine-tune)
-> with ``search.devices``, the same search for each device and their choices compared on
every device (``experiments/nas_devices.py``) -> results.json and a Pareto PNG in the
workdir. Every stage caches its output in the workdir, so a re-run after an interruption
continues where it stopped.
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from core import config as config_lib
from core import distributed
from experiments import agreed_json, nas_devices, preamble, shared_json
from export.for_runner import SUFFIX, model_format
from export.runners import get_runner
from nas import architecture, block_latency, distill, evolution, finetune, finetuned_targets
from nas import int8_friendliness
from nas import pareto_plot, search_space, teacher_blocks
from nas import predictor_evaluation
from nas.predictor_fitting import build_graphs, measure_architectures, predictor_factories


def _log(msg):
    print(f"[nas {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_teacher(cfg):
    """(fn, variables, dataset, summary) from the cached trained teacher or an untrained zoo
    model (``cfg.teacher_source = "untrained"``, for smoke tests)."""
    tcfg = cfg.teacher
    if cfg.get("teacher_source", "trained") == "trained":
        teacher = preamble.prepare(tcfg, show_progress=False)
        return teacher.fn, teacher.variables, teacher.dataset, teacher.summary
    dataset = preamble.load_data(tcfg)
    module = preamble.build_module(tcfg.model, tcfg.get("tiny", False))
    variables = module.init(jax.random.key(0), jnp.zeros((1,) + dataset.image_shape))
    return (preamble.inference_fn(module), variables, dataset,
            {"model": tcfg.model, "trained": False})


def split_teacher(cfg, fn, variables, dataset):
    x = jnp.zeros((cfg.distill.batch_size,) + dataset.image_shape, jnp.float32)
    if cfg.blocks == "auto":
        return teacher_blocks.split_at_cut_points(fn, variables, x)
    return teacher_blocks.split_by_modules(fn, variables, x, list(cfg.blocks))


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


def distilled_library(cfg, fn, variables, dataset, workdir):
    """Teacher blocks, search space, distilled students -> (block library, students)."""
    blocks = split_teacher(cfg, fn, variables, dataset)
    space = search_space.build_space(blocks, cfg.space)
    _log(f"{len(blocks)} teacher blocks; searching positions {space.positions} with "
         f"{space.sizes} options ({space.size:.3g} architectures, "
         f"{len(space.students())} students)")
    students = distill.distill_space(space, blocks, dataset, cfg.distill,
                                     os.path.join(workdir, "distill"), distill.student_mesh(),
                                     cfg.show_progress)
    return architecture.BlockLibrary(blocks, space, students), students


def _measured_samples(cfg, library, dataset, runner, workdir, block_table):
    """The sampled architectures (the all-teacher one first), measured, cached. With
    ``measure.latency_range`` ([low, high], fractions of the teacher's summed block
    latency), only architectures in that range are sampled: the predictors learn the part
    of the space the latency budget lets the search choose from."""
    accept, bounds = None, cfg.measure.get("latency_range")
    if bounds:
        teacher_ms = block_table.summed(library.space.teacher())
        accept = lambda a: bounds[0] <= block_table.summed(a) / teacher_ms <= bounds[1]  # noqa
    archs = library.space.sample(np.random.default_rng(cfg.seed), cfg.measure.architectures,
                                 include_teacher=True, accept=accept)
    with_latency = [k < cfg.measure.latency_architectures for k in range(len(archs))]
    return shared_json(sampled_path(cfg, workdir), lambda: measure_architectures(
        library, archs, dataset, cfg, runner, with_latency, _log))


def _block_table(cfg, library, runner, workdir) -> block_latency.BlockTable:
    """Every block option timed alone on the runner (``nas.block_latency``), cached beside
    the sampled architectures; process 0's values."""
    path = os.path.join(workdir, f"block_table-{stage_hash(cfg, *SAMPLED_SECTIONS)}.json")
    return block_latency.BlockTable.from_dict(shared_json(path, lambda: (
        block_latency.measure_block_table(library, runner, cfg.measure.rounds,
                                          cfg.measure.runs, cfg.seed).as_dict())))


SEARCH_PREDICTOR = "gnn"      # the accuracy predictor NSGA-II searches on


def _predictors(cfg, library, dataset, rows, block_table):
    """Predictors judged over ``predictor.splits`` random train/test splits, then the search's
    predictors fitted once on every sample: (report, accuracy predictor, latency predictor,
    the predictor factories per target).
    The latency predictor is ``search.latency_predictor`` (default the GNN; 'block_table':
    the calibrated sum of the blocks' measured latencies)."""
    graphs, table = build_graphs(library, dataset)
    factories = predictor_factories(library, graphs, table, rows, cfg)
    factories["latency_ms"]["block_table"] = block_latency.calibrated(block_table)
    report = predictor_evaluation.evaluate_targets(
        rows, factories, cfg.predictor.get("splits", 20), cfg.predictor.train_fraction,
        cfg.seed + 1, _log)
    acc_model = factories["accuracy"][SEARCH_PREDICTOR]().fit(
        [tuple(r["arch"]) for r in rows], np.array([r["accuracy"] for r in rows]))
    lat_rows = [r for r in rows if r.get("latency_ms") is not None]
    lat_model = factories["latency_ms"][cfg.search.get("latency_predictor",
                                                       SEARCH_PREDICTOR)]().fit(
        [tuple(r["arch"]) for r in lat_rows], np.array([r["latency_ms"] for r in lat_rows]))
    return report, acc_model, lat_model, factories


def _finetune_agreement(cfg, library, teacher, dataset, rows, factories, workdir) -> dict:
    """``measure.finetune_architectures`` sampled architectures (after the teacher)
    fine-tuned briefly (``nas.finetuned_targets``, cached and resumable): how well the
    untrained target and the search's accuracy predictor rank them. {} when 0."""
    n = cfg.measure.get("finetune_architectures", 0)
    if not n:
        return {}
    archs = [tuple(r["arch"]) for r in rows[1:n + 1]]
    key = stage_hash(cfg, *SAMPLED_SECTIONS, "finetune")
    tuned = shared_json(os.path.join(workdir, f"short_finetunes-{key}.json"), lambda: (
        finetuned_targets.short_finetunes(
            library, archs, *teacher, dataset, cfg.finetune, cfg.measure.finetune_steps,
            cfg.measure.finetune_learning_rate, os.path.join(workdir, "short_finetunes", key),
            _log)))
    return finetuned_targets.agreement(rows, tuned, factories["accuracy"][SEARCH_PREDICTOR])


def headline_taus(report, latency_predictor: str = SEARCH_PREDICTOR) -> dict:
    """The search predictors' Kendall tau over splits (mean and sd) for accuracy and latency,
    None where a target was not judged: the figures the NAS benchmark publishes."""
    def of(target, key):
        name = latency_predictor if target == "latency_ms" else SEARCH_PREDICTOR
        judged = report.get(target, {}).get(name)
        return judged[key] if judged else None
    return {"accuracy_tau_mean": of("accuracy", "kendall_tau"),
            "accuracy_tau_sd": of("accuracy", "kendall_tau_sd"),
            "latency_tau_mean": of("latency_ms", "kendall_tau"),
            "latency_tau_sd": of("latency_ms", "kendall_tau_sd"),
            "predictor_splits": of("accuracy", "splits")}


def _search(cfg, library, dataset, rows, acc_model, lat_model, int8_profile=None):
    """NSGA-II on the predictors under the latency budget (a fraction of the teacher's
    latency in ``rows``, measured on the device ``lat_model`` predicts): (result, budget,
    objective columns, int8 penalties or None). ``int8_profile`` overrides the config's
    ("": the search without the int8 objective)."""
    budget = cfg.search.latency_budget * rows[0]["latency_ms"]   # rows[0]: the teacher
    columns = [lambda a: -acc_model.predict(a), lat_model.predict]
    penalties = None
    profile = cfg.search.get("int8_profile", "") if int8_profile is None else int8_profile
    if profile:                               # optional third objective: lint penalties
        penalties = int8_friendliness.option_penalties(library, dataset, profile)
        columns.append(lambda a: int8_friendliness.architecture_penalty(penalties, a))
    objectives = lambda a: np.stack([c(a) for c in columns], 1)  # noqa: E731
    result = evolution.nsga2(library.space.sizes, objectives, cfg.search.population,
                             cfg.search.generations, seed=cfg.seed,
                             violation=lambda a: np.maximum(lat_model.predict(a) - budget, 0),
                             initial=[tuple(r["arch"]) for r in rows])
    return result, budget, columns, penalties


def _front_archs(cfg, search):
    """The front thinned to ``search.measure_front`` architectures, plus the best."""
    front = search.front[:: max(1, len(search.front) // cfg.search.measure_front)]
    return list(dict.fromkeys(front + search.front[:1]))[:cfg.search.measure_front + 1]


def _front_row(library, dataset, arch, columns, models):
    acc_model, lat_model = models
    return {"arch": list(arch), "choices": [c.key for c in library.space.choices(arch)],
            "predicted_accuracy": float(acc_model.predict([arch])[0]),
            "predicted_latency_ms": float(lat_model.predict([arch])[0]),
            **({"int8_penalty": float(columns[2]([arch])[0])} if len(columns) > 2 else {}),
            "test_accuracy": architecture.evaluate(library, arch, dataset, "test"),
            **architecture.cost(library, arch)}


def _measure_front_and_teacher(cfg, library, dataset, runner, search, columns, models,
                               workdir):
    """The front (``_front_archs``) and the teacher assembled, evaluated on the test split,
    exported once (the front parity-checked, saved as frontK.onnx) and timed together in one
    set of interleaved rounds, twice (``architecture.measure_latencies``), so the front's
    latencies and the teacher's compare. (front rows, teacher row), process 0's values."""
    archs = _front_archs(cfg, search) + [library.space.teacher()]
    n_front = len(archs) - 1
    rows = [_front_row(library, dataset, arch, columns, models) for arch in archs[:-1]]
    rows.append({"test_accuracy": architecture.evaluate(library, archs[-1], dataset, "test"),
                 **architecture.cost(library, archs[-1])})
    save, suffix = distributed.is_primary(), SUFFIX[model_format(runner)]
    exported = [architecture.export_model(
        library, arch, dataset.image_shape,
        os.path.join(workdir, f"front{k}{suffix}") if save and k < n_front else None,
        parity=k < n_front, runner=runner) for k, arch in enumerate(archs)]
    timed = architecture.measure_latencies(runner, [m for m, _ in exported],
                                           cfg.measure.rounds, cfg.measure.runs, cfg.seed)
    for row, (_, fields), latency in zip(rows, exported, timed):
        row.update({**fields, **latency})
    return (agreed_json(os.path.join(workdir, "front_measured.json"), rows[:-1]),
            agreed_json(os.path.join(workdir, "teacher_measured.json"), rows[-1]))


def main(cfg, workdir):
    t0, timings = time.time(), {}
    os.makedirs(workdir, exist_ok=True)
    fn, variables, dataset, teacher_summary = load_teacher(cfg)
    library, students = distilled_library(cfg, fn, variables, dataset, workdir)
    timings["distill_s"] = time.time() - t0
    runner = get_runner(cfg.device, runs=cfg.measure.runs, warmup=cfg.measure.warmup)
    t1 = time.time()
    block_table = _block_table(cfg, library, runner, workdir)
    rows = _measured_samples(cfg, library, dataset, runner, workdir, block_table)
    timings["measure_s"] = time.time() - t1
    t2 = time.time()
    report, acc_model, lat_model, factories = _predictors(cfg, library, dataset, rows,
                                                          block_table)
    agreement = _finetune_agreement(cfg, library, (fn, variables), dataset, rows, factories,
                                    workdir)
    timings["predictors_s"] = time.time() - t2
    t3 = time.time()
    search, budget, columns, penalties = _search(cfg, library, dataset, rows, acc_model,
                                                 lat_model)
    front, teacher_final = _measure_front_and_teacher(
        cfg, library, dataset, runner, search, columns, (acc_model, lat_model), workdir)
    timings["search_s"] = time.time() - t3
    chosen = max(front, key=lambda r: (r["latency_ms"] <= budget, r["predicted_accuracy"]))
    t4 = time.time()
    claim = finetune.claim_check(library, tuple(chosen["arch"]), fn, variables, dataset,
                                 cfg.finetune, finetune_dir(cfg, workdir, chosen["arch"]))
    timings["finetune_s"] = time.time() - t4
    t5 = time.time()
    devices = nas_devices.device_study(cfg, library, dataset, nas_devices.Primary(
        rows, {k: f for k, f in factories["latency_ms"].items() if k != "block_table"},
        lat_model, search, acc_model,
        lambda r, lat, profile: _search(cfg, library, dataset, r, acc_model, lat, profile)[0],
        stage_hash(cfg, *SAMPLED_SECTIONS)), workdir, stage_hash(cfg, *cfg.keys()), _log)
    timings["devices_s"] = time.time() - t5
    png = os.path.join(workdir, "pareto.png")
    if distributed.is_primary():
        png = pareto_plot.plot_fronts(rows, front, teacher_final, png, budget)
    timings["total_s"] = time.time() - t0
    results = {"teacher": teacher_summary, "teacher_measured": teacher_final,
               "blocks": [{"name": b.name, "in": b.in_shape[1:], "out": b.out_shape[1:]}
                          for b in library.blocks],
               "space": library.space.as_dict(), "space_size": library.space.size,
               "students": {f"{p}:{c.key}": s.val_nsr
                            for (p, c), s in students.items()},
               "predictors": report, "accuracy_target": cfg.measure.get("target", "assembled"),
               "finetune_agreement": agreement,
               **headline_taus(report, cfg.search.get("latency_predictor", SEARCH_PREDICTOR)),
               "latency_predictor": cfg.search.get("latency_predictor", SEARCH_PREDICTOR),
               "block_table": block_table.as_dict(), "latency_budget_ms": budget,
               "retest_tau": architecture.retest_tau(rows),
               "front_retest_tau": architecture.retest_tau(front + [teacher_final]),
               "latency_statistic": f"p{architecture.LATENCY_PERCENTILE}",
               "search_history": search.history, "front": front, "chosen": chosen,
               "claim_check": claim, "device_search": devices, "pareto_png": png, "timings": timings,
               "device": cfg.device, "jax_devices": jax.device_count(),
               "int8_profile": cfg.search.get("int8_profile", ""),
               "int8_penalties": (int8_friendliness.describe(library, penalties)
                                  if penalties is not None else {}),
               "config_hash": stage_hash(cfg, *cfg.keys()),
               "sampled_path": sampled_path(cfg, workdir)}
    if distributed.is_primary():
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=1, default=float)
    _log(f"done in {timings['total_s'] / 60:.1f} min: chosen {chosen['choices']} "
         f"test acc {chosen['test_accuracy']:.4f} at {chosen['latency_ms']:.3f} ms "
         f"(teacher {teacher_final['test_accuracy']:.4f} at {teacher_final['latency_ms']:.3f} ms)")
    return results
