"""The NAS experiment's device-specific stage (``search.devices``, run by nas_search.main).

For every device beyond the primary one (``cfg.device``): the sampled architectures that the
primary device timed are exported in this device's format and timed on it, every block
option is timed on it (``nas.block_latency``), its latency predictors are judged over the
same random splits, and NSGA-II searches again with the same accuracy predictor and the
device's own latency constraint. Then ``nas.device_search`` picks each device's choice at
equal predicted accuracy, and every choice (and the teacher) is evaluated on the test split
and timed on every device. Without the int8-friendliness objective the primary search runs
once more, and both choices are quantized (PTQ on the objective's profile) and evaluated:
what the objective buys in int8 accuracy. Stages are cached in the workdir.
"""
import dataclasses
import os
from typing import Any, Callable, Dict

import numpy as np

from core import distributed
from experiments import shared_json
from export.runners import get_runner
from nas import architecture, block_latency, device_search, int8_friendliness, pareto_plot
from nas import predictor_evaluation
from nas.predictor_fitting import attach_latencies


@dataclasses.dataclass
class Primary:
    """What the main pipeline already has for its own device."""
    rows: list                       # sampled architectures, measured on cfg.device
    factories: Dict[str, Callable]   # latency predictor factories (device independent)
    lat_model: Any
    search: Any                      # evolution.SearchResult of the primary search
    acc_model: Any
    search_fn: Callable              # (rows, lat_model, int8_profile) -> SearchResult
    cache_key: str                   # the stage hash of the sampled architectures


def _device_rows(cfg, library, dataset, primary: Primary, runner, log):
    """The primary rows' architectures (accuracy and cost kept), timed on ``runner``: those
    the primary device timed, in this device's format."""
    rows = [{k: v for k, v in r.items() if not k.startswith(("latency", "onnx_ops",
                                                              "tflite_ops"))}
            for r in primary.rows]
    exported = {k: architecture.export_model(library, tuple(r["arch"]), dataset.image_shape,
                                             runner=runner)
                for k, r in enumerate(primary.rows) if r.get("latency_ms") is not None}
    return attach_latencies(rows, exported, runner, cfg.measure, cfg.seed, log)


def _device_search(cfg, library, dataset, primary: Primary, device, workdir, log) -> dict:
    """One more device: its measurements (cached), latency predictors judged, its search."""
    runner = get_runner(device, runs=cfg.measure.runs, warmup=cfg.measure.warmup)
    stem = os.path.join(workdir, f"device-{device}-{primary.cache_key}")
    rows = shared_json(stem + "-sampled.json",
                       lambda: _device_rows(cfg, library, dataset, primary, runner, log))
    table = block_latency.BlockTable.from_dict(shared_json(stem + "-blocks.json", lambda: (
        block_latency.measure_block_table(library, runner, cfg.measure.rounds,
                                          cfg.measure.runs, cfg.seed).as_dict())))
    factories = {**primary.factories, "block_table": block_latency.calibrated(table)}
    report = predictor_evaluation.evaluate_targets(
        rows, {"latency_ms": factories}, cfg.predictor.get("splits", 20),
        cfg.predictor.train_fraction, cfg.seed + 1, log).get("latency_ms", {})
    timed = [r for r in rows if r.get("latency_ms") is not None]
    name = cfg.search.get("latency_predictor", "gnn")
    lat_model = factories[name]().fit([tuple(r["arch"]) for r in timed],
                                      np.array([r["latency_ms"] for r in timed]))
    return {"runner": runner, "rows": rows, "lat_model": lat_model,
            "search": primary.search_fn(rows, lat_model, None),
            "latency_predictors": report, "block_table_retest_tau": table.retest_tau,
            "retest_tau": architecture.retest_tau(rows)}


def _int8_comparison(cfg, library, dataset, primary: Primary, chosen_with) -> dict:
    """The primary device's choice with and without the int8-friendliness objective, each
    quantized on that objective's profile and evaluated (float and int8 test accuracy)."""
    profile = cfg.search.get("int8_profile", "")
    without = primary.search_fn(primary.rows, primary.lat_model, "")
    chosen_without = device_search.equal_accuracy_choice(
        without.front, primary.acc_model.predict, primary.lat_model.predict,
        float(np.max(primary.acc_model.predict(list(without.front)))))
    out = {"profile": profile}
    for label, arch in (("with_objective", chosen_with), ("without_objective", chosen_without)):
        out[label] = {"arch": list(arch),
                      "choices": [c.key for c in library.space.choices(arch)],
                      "test_accuracy": architecture.evaluate(library, arch, dataset, "test"),
                      "int8_test_accuracy": int8_friendliness.int8_accuracy(
                          library, arch, dataset, profile)}
    return out


def device_study(cfg, library, dataset, primary: Primary, workdir, study_key: str,
                 log) -> dict:
    """``search.devices`` (two or more, the primary one among them): each device's search,
    its choice at equal accuracy timed on every device, the verdict, the int8 comparison
    (cached as devices-<study_key>.json), a table and a PNG. ``{}`` when fewer than two
    devices are named."""
    devices = list(cfg.search.get("devices", None) or [])
    if len(devices) < 2:
        return {}
    if cfg.device not in devices:
        raise ValueError(f"search.devices {devices} must include the primary device "
                         f"{cfg.device!r} (its measurements are the sampled architectures')")
    study = shared_json(os.path.join(workdir, f"devices-{study_key}.json"), lambda: _study(
        cfg, library, dataset, primary, devices, workdir, log))
    if distributed.is_primary():
        study["png"] = pareto_plot.plot_devices(study, os.path.join(workdir, "devices.png"))
        with open(os.path.join(workdir, "devices.md"), "w") as f:
            f.write(device_search.markdown(study))
    return study


def _study(cfg, library, dataset, primary: Primary, devices, workdir, log) -> dict:
    per_device = {cfg.device: {"runner": get_runner(cfg.device, runs=cfg.measure.runs,
                                                    warmup=cfg.measure.warmup),
                               "lat_model": primary.lat_model, "search": primary.search}}
    for device in devices:
        if device != cfg.device:
            log(f"device-specific search: {device}")
            per_device[device] = _device_search(cfg, library, dataset, primary, device,
                                                workdir, log)
    fronts = {d: per_device[d]["search"].front for d in devices}
    target = device_search.accuracy_target(fronts, primary.acc_model.predict)
    chosen = {d: device_search.equal_accuracy_choice(
        fronts[d], primary.acc_model.predict, per_device[d]["lat_model"].predict, target)
        for d in devices}
    archs = list(dict.fromkeys([chosen[d] for d in devices] + [library.space.teacher()]))
    timed = device_search.cross_latencies(
        library, archs, {d: per_device[d]["runner"] for d in devices}, dataset.image_shape,
        cfg.measure.rounds, cfg.measure.runs, cfg.seed)
    rows = {a: {"arch": list(a), "choices": [c.key for c in library.space.choices(a)],
                "test_accuracy": architecture.evaluate(library, a, dataset, "test"),
                "predicted_accuracy": float(primary.acc_model.predict([a])[0]),
                "latency_ms": {d: timed[d][k]["latency_ms"] for d in devices},
                "predicted_latency_ms": {d: float(per_device[d]["lat_model"].predict([a])[0])
                                         for d in devices}}
            for k, a in enumerate(archs)}
    study = {"devices": devices, "accuracy_target": target,
             "choices": {d: rows[chosen[d]] for d in devices},
             "teacher": rows[library.space.teacher()],
             "same_choice": len(set(chosen.values())) == 1,
             "extra_devices": {d: {k: per_device[d][k] for k in
                                   ("latency_predictors", "block_table_retest_tau",
                                    "retest_tau")} for d in devices if d != cfg.device}}
    study["verdict"] = device_search.verdict(study["choices"], devices)
    if cfg.search.get("int8_profile", ""):
        study["int8_objective"] = _int8_comparison(cfg, library, dataset, primary,
                                                   chosen[cfg.device])
    return study
