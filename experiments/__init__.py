"""Experiment programs, apart from the library (as big_vision keeps its trainers apart).

Each program is a module with ``main(config, workdir)`` that writes only under ``workdir``;
a program that publishes tables also has ``publish(config, result)``, which ``run`` calls
only when the config's ``publish`` is set and the run is in its default workdir
(``registry.publishes``), and the benchmark scripts call explicitly. ``preamble`` holds what
every program starts with (the cached teacher and its data), ``registry`` finds, loads and
validates the config files. The library packages (core, pruning, quant, lowrank, nas,
export) never import this package.

    train_teacher      a zoo model trained on a data set (the cached teacher)
    learned_pruning    learned-gate channel pruning, fine-tuned, exported, measured
    block_family       a family of models, each one block smaller, for one device
    quantization       PTQ variants, QAT and onnxruntime's quantizer on one model
    nas_search         DONNA-style blockwise distillation, predictors and NSGA-II
    lowrank_study      SVD vs data-aware vs learned low-rank factorization
    real_model_pruning a real pretrained model pruned by distillation on real images
"""
import importlib
import json
import os


def run(config, workdir: str):
    """Runs ``config.program``'s ``main(config, workdir)``; publishes its result when
    ``registry.publishes(config, workdir)``. Returns the program's result."""
    from experiments import registry
    program = importlib.import_module(config.program)
    result = program.main(config, workdir)
    if registry.publishes(config, workdir) and hasattr(program, "publish"):
        program.publish(config, result)
    return result


def gate_settings(config):
    """``pruning.gates.GateSettings`` of ``config.gates``; ``gates.multiple = 0`` becomes
    the channel step ``config.device``'s kernels reward (``Runner.channel_multiple``)."""
    from export.runners import get_runner
    from pruning import gates
    device_multiple = (get_runner(config.device).channel_multiple
                       if config.gates.multiple <= 0 else None)
    return gates.GateSettings.from_config(config.gates, device_multiple)


def write_result(workdir: str, result: dict, markdown: str = None) -> None:
    """A program's result as ``workdir/result.json`` (and its table as ``result.md``); in a
    job of several processes only process 0 writes."""
    from core import distributed
    if not distributed.is_primary():
        return
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
    if markdown is not None:
        with open(os.path.join(workdir, "result.md"), "w") as f:
            f.write(markdown + "\n")


def shared_json(path: str, compute):
    """A stage's JSON value, cached at ``path``: read when the file exists, else computed
    by every process (stages may run collectives) and agreed on (``agreed_json``)."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return agreed_json(path, compute())


def agreed_json(path: str, value):
    """``value`` as process 0 computed it, in every process: process 0 writes it to
    ``path`` atomically and the others read it back (measured latencies differ between
    processes, and the stages after them must agree on one value). In a single process
    it writes ``value`` and returns it unchanged."""
    from core import distributed
    if distributed.process_count() == 1:
        _write_atomically(path, value)
        return value
    if distributed.is_primary():
        _write_atomically(path, value)
    distributed.barrier(f"agreed_json:{os.path.basename(path)}")
    with open(path) as f:
        return json.load(f)


def _write_atomically(path: str, value) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1, default=float)
    os.replace(path + ".tmp", path)


def publish_json(config, result: dict) -> None:
    """A program's result as the published ``benchmarks/results/<experiment>.json``."""
    from core import distributed
    from experiments import registry
    if not distributed.is_primary():
        return
    os.makedirs(registry.RESULTS, exist_ok=True)
    with open(os.path.join(registry.RESULTS, f"{config.experiment_name}.json"), "w") as f:
        json.dump(result, f, indent=2, default=float)
