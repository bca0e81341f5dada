"""Weighted block pruning: one run yields a family of models, each one block smaller than the
previous, chosen for one device by what each block costs in quality against the latency
it saves there.

Scoring a block (``score_blocks``): remove it alone from the current model and measure the
quality lost on real validation images (distillation loss against the full model and
accuracy) and the latency saved on the device (the model exported to ONNX and timed on the
runner, or predicted by ``export.LatencyModel``). The trade-off normalizes both over the
candidates of the step, ``score = (1 - w) * quality_cost / max - w * latency_saved / max``,
so ``w = 0`` removes the least harmful block and ``w = 1`` the one that saves the most time
whatever it costs. The family (``build_family``) removes the lowest-score block greedily,
re-scoring the remaining blocks on the smaller model after each removal when asked
(otherwise the first scores are reused). Each member is then fine-tuned briefly by
distillation from the full model, exported with a parity check and measured
(``export.measure.export_and_measure``), exactly like the channel-pruned models, so both can
be compared on one plot (``benchmarks/block_pruning.py``).
"""
import dataclasses
import glob
import json
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from core import fast_depthwise, losses, teacher as teacher_lib, train as train_lib
from data import pipeline
from export.measure import export_and_measure
from pruning import blocks as blocks_lib


class QualityProbe:
    """Quality of a model on fixed validation images: accuracy and the distillation loss
    against the full model's logits (computed once)."""

    def __init__(self, images, labels, reference_logits, temperature: float,
                 batch_size: int = 500):
        self.images, self.labels = images, labels
        self.reference = reference_logits
        self.temperature, self.batch_size = temperature, batch_size

    @classmethod
    def from_dataset(cls, dataset, reference_fn: Callable, examples: int, temperature: float,
                     batch_size: int = 500) -> "QualityProbe":
        x, y = dataset.validation
        x, y = x[:examples], y[:examples]
        images = pipeline.normalize(x, dataset.mean, dataset.std)
        reference_fn = jax.jit(fast_depthwise.on_cpu(reference_fn))
        reference = np.concatenate([np.asarray(reference_fn(images[i:i + batch_size]))
                                    for i in range(0, len(images), batch_size)])
        return cls(images, np.asarray(y), reference, temperature, batch_size)

    def __call__(self, fn, variables) -> Dict[str, float]:
        fn = fast_depthwise.on_cpu(fn)      # XLA's CPU depthwise conv is a slow loop

        @jax.jit
        def sums(v, x, y, ref):
            logits = fn(v, x)
            correct = jnp.sum(jnp.argmax(logits, -1) == y)
            kd = losses.kd_logits_loss(logits, ref, self.temperature) * x.shape[0]
            return correct, kd
        correct = kd = 0.0
        for i in range(0, len(self.images), self.batch_size):
            c, k = sums(variables, self.images[i:i + self.batch_size],
                        self.labels[i:i + self.batch_size],
                        self.reference[i:i + self.batch_size])
            correct, kd = correct + float(c), kd + float(k)
        n = len(self.images)
        return {"accuracy": correct / n, "kd_loss": kd / n}


class LatencyProbe:
    """Latency (ms) of models on the device at one batch size: ``measured`` exports them to
    ONNX and times them on the runner, ``model`` predicts them with ``export.LatencyModel``.

    Measured models are timed side by side (``rounds`` rounds over all of them, samples
    pooled): a block saves a few percent of the latency, less than the load drift of a
    shared machine between two candidates timed one after the other."""

    def __init__(self, device: str, source: str, batch: int, runs: int, directory: str,
                 table_path: Optional[str] = None, rounds: int = 5):
        from export import get_runner
        if source not in ("measured", "model"):
            raise ValueError(f"latency source {source!r}: choose 'measured' or 'model'")
        self.runner, self.source, self.batch, self.runs = get_runner(device), source, batch, runs
        self.directory, self.rounds = directory, max(1, rounds)
        self._model = None
        if source == "model":
            from export import LatencyModel, LatencyTable
            self._model = LatencyModel(LatencyTable(self.runner, table_path, progress=False))

    def __call__(self, models: Sequence, example_input) -> List[float]:
        """``models``: ``(name, fn, variables)`` triples; returns their latencies in order."""
        x = np.repeat(np.asarray(example_input[:1]), self.batch, axis=0)
        if self._model is not None:
            return [float(self._model.predict(fn, v, x)) for _, fn, v in models]
        from export import to_onnx
        from export.runners import measure_interleaved
        paths = []
        for name, fn, v in models:
            paths.append(os.path.join(self.directory, f"{name}.onnx"))
            to_onnx(fn, v, x[:1], path=paths[-1], parity=False)
        runs = max(1, self.runs // self.rounds)
        timed = measure_interleaved(self.runner, paths, (self.batch,), runs, self.rounds)
        return [float(t[self.batch].median_ms) for t in timed]


@dataclasses.dataclass
class BlockScore:
    block: int
    label: str
    accuracy: float
    kd_loss: float
    latency_ms: float
    quality_cost: float = 0.0
    latency_saved_ms: float = 0.0
    score: float = 0.0


def trade_off(scores: List[BlockScore], weight: float, base_quality: Dict[str, float],
              base_latency_ms: float, quality: str = "kd_loss") -> List[BlockScore]:
    """Fills quality cost, latency saved and the weighted score (lower is removed first)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"trade-off weight {weight} must lie in [0, 1]")
    for s in scores:
        s.quality_cost = (s.kd_loss - base_quality["kd_loss"] if quality == "kd_loss"
                          else base_quality["accuracy"] - s.accuracy)
        s.latency_saved_ms = base_latency_ms - s.latency_ms
    q_scale = max([abs(s.quality_cost) for s in scores] + [1e-12])
    t_scale = max([abs(s.latency_saved_ms) for s in scores] + [1e-12])
    for s in scores:
        s.score = ((1 - weight) * s.quality_cost / q_scale
                   - weight * s.latency_saved_ms / t_scale)
    return scores


@dataclasses.dataclass
class FamilySettings:
    members: int = 6              # models after the full one, each one block smaller
    weight: float = 0.5           # 0: quality only, 1: latency only
    rescore: bool = False         # re-score the remaining blocks after each removal
    quality: str = "kd_loss"      # or "accuracy"

    @classmethod
    def from_config(cls, cfg) -> "FamilySettings":
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name in cfg})


def score_blocks(fn, variables, x1, analysis, removed: Sequence, candidates: Sequence,
                 quality_probe: QualityProbe, latency_probe: LatencyProbe,
                 settings: FamilySettings, log=print):
    """Scores of removing each candidate from the model without ``removed``; also returns
    the current model's quality and latency."""
    current = blocks_lib.remove_blocks(fn, variables, x1, blocks=removed, analysis=analysis)
    base_quality = quality_probe(current.fn, current.variables)
    trials, scores = [("current", current.fn, current.variables)], []
    for block in candidates:
        trial = blocks_lib.remove_blocks(fn, variables, x1, blocks=list(removed) + [block],
                                         analysis=analysis)
        q = quality_probe(trial.fn, trial.variables)
        trials.append((f"block{block.id}", trial.fn, trial.variables))
        scores.append(BlockScore(block.id, block.label, q["accuracy"], q["kd_loss"], 0.0))
    base_latency, *latencies = latency_probe(trials, x1)
    for s, ms in zip(scores, latencies):
        s.latency_ms = ms
        log(f"  block {s.block:3d} {s.label:50s} val acc {s.accuracy:.4f} "
            f"kd {s.kd_loss:.4f} latency {ms:.3f} ms")
    trade_off(scores, settings.weight, base_quality, base_latency, settings.quality)
    return scores, base_quality, base_latency


def build_family(fn, variables, x1, analysis, settings: FamilySettings,
                 quality_probe: QualityProbe, latency_probe: LatencyProbe, log=print):
    """Greedy removal: a list of ``(removed blocks, score of the block removed last)``, the
    k-th entry k blocks smaller than the full model (entry 0)."""
    family = [([], None)]
    removed: List = []
    scores = None
    for step in range(settings.members):
        available = {b.id: b for b in analysis.available(removed)}
        if not available:
            log(f"no removable block left after {step} removals")
            break
        if scores is None or settings.rescore:
            log(f"scoring {len(available)} blocks with {len(removed)} removed")
            scores, _, _ = score_blocks(fn, variables, x1, analysis, removed,
                                        list(available.values()), quality_probe,
                                        latency_probe, settings, log)
        ranked = sorted((s for s in scores if s.block in available), key=lambda s: s.score)
        if not ranked:
            break
        choice = ranked[0]
        removed = removed + [available[choice.block]]
        log(f"member {step + 1}: remove {choice.label} (score {choice.score:+.3f}, quality "
            f"cost {choice.quality_cost:+.4f}, saves {choice.latency_saved_ms:.3f} ms)")
        family.append((list(removed), choice))
    return family


# ------------------------------------------------------------------------- experiment
def _table(rows) -> str:
    header = ("| blocks removed | last removed | test acc | acc after KD | FLOPs (M) | "
              "params (k) | ORT b1 (ms) | ORT b32 (ms) |\n|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['blocks_removed']} | {r['last_removed'] or '-'} | "
             f"{r['accuracy_before_finetune'] * 100:.2f} | "
             f"{r['accuracy_after_finetune'] * 100:.2f} | {r['flops'] / 1e6:.2f} | "
             f"{r['params'] / 1e3:.1f} | {r['batch1_median_ms']:.3f} | "
             f"{r['batch32_median_ms']:.2f} |" for r in rows]
    return header + "\n".join(lines)


def _finetune(member, dataset, config, workdir, teacher_fn):
    if not config.finetune.get("steps", 0):
        return member.variables, None
    model = train_lib.TrainableModel(member.variables,
                                     lambda v, x, rng: (member.fn(v, x), {}), member.fn)
    tuned = train_lib.train(model, dataset, config.finetune, workdir,
                            loss_fn=losses.distillation_from(
                                teacher_fn, config.kd.kd_temperature, config.kd.kd_alpha),
                            show_progress=False)
    return tuned["variables"], tuned["test"]["accuracy"]


def _family_key(config, teacher_key: str) -> str:
    from core import config as config_lib
    import ml_collections
    return config_lib.config_hash(ml_collections.ConfigDict(
        {"teacher": teacher_key, "device": config.device, "blocks": config.blocks.to_dict(),
         "family": config.family.to_dict()}))


def _save_family(workdir, config, teacher_key, family):
    """The chosen removals, so a resumed run goes straight to fine-tuning."""
    plain = [{"removed": [b.id for b in removed], "labels": [b.label for b in removed],
              "choice": dataclasses.asdict(choice) if choice else None}
             for removed, choice in family]
    with open(os.path.join(workdir, "family.json"), "w") as f:
        json.dump({"key": _family_key(config, teacher_key), "family": plain}, f, indent=1)


def _cached_family(workdir, config, teacher_key, analysis):
    path = os.path.join(workdir, "family.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    if saved["key"] != _family_key(config, teacher_key):
        return None
    family = []
    for entry in saved["family"]:
        removed = analysis.by_id(entry["removed"])     # ids are deterministic per model
        if [b.label for b in removed] != entry["labels"]:
            return None
        family.append((removed, BlockScore(**entry["choice"]) if entry["choice"] else None))
    print(f"reusing the family chosen by a previous run ({path})")
    return family


def main(config, workdir):
    start = time.time()
    module, variables, summary = teacher_lib.get_teacher(config.teacher)
    dataset = teacher_lib.load_data(config.teacher)
    fn = lambda v, x: module.apply(v, x, train=False)  # noqa: E731
    x1 = np.asarray(pipeline.normalize(dataset.test[0][:1], dataset.mean, dataset.std))
    teacher_fn = jax.jit(lambda x: fn(variables, x))
    settings = FamilySettings.from_config(config.family)

    analysis = blocks_lib.find_blocks(fn, variables, x1,
                                      module_paths=tuple(config.blocks.module_paths),
                                      automatic=config.blocks.automatic)
    analysis = blocks_lib.with_costs(fn, variables, x1, analysis)
    print(f"{len(analysis.blocks)} removable blocks; {len(analysis.rejected)} candidates "
          f"never offered; teacher test accuracy {summary['test_accuracy']:.4f}")
    for block in analysis.blocks:
        print(f"  block {block.id:3d} {block.kind:13s} {block.label:50s} "
              f"{block.flops / 1e6:8.3f} MFLOPs  {block.source_lines[0]}")
    for what, why in analysis.rejected:
        print(f"  not offered: {what}: {why}")

    quality_probe = QualityProbe.from_dataset(dataset, teacher_fn, config.family.score_examples,
                                              config.kd.kd_temperature)
    latency_probe = LatencyProbe(config.device, config.family.latency_source,
                                 config.family.latency_batch, config.family.latency_runs,
                                 os.path.join(workdir, "scoring"),
                                 config.family.get("latency_table_path"),
                                 config.family.get("latency_rounds", 5))
    family = _cached_family(workdir, config, summary["key"], analysis)
    if family is None:
        family = build_family(fn, variables, x1, analysis, settings, quality_probe,
                              latency_probe)
        # A new family: fine-tune checkpoints of an earlier one must not be resumed.
        for stale in glob.glob(os.path.join(workdir, "member*")):
            shutil.rmtree(stale)
    _save_family(workdir, config, summary["key"], family)

    rows = []
    for k, (removed, choice) in enumerate(family):
        member = blocks_lib.remove_blocks(fn, variables, x1, blocks=removed, analysis=analysis)
        if k == 0:
            accuracy, tuned_vars, tuned_acc = summary["test_accuracy"], member.variables, None
        else:
            accuracy = train_lib.evaluate(member.fn, member.variables, dataset, "test")["accuracy"]
            tuned_vars, tuned_acc = _finetune(member, dataset, config,
                                              os.path.join(workdir, f"member{k}", "finetune"),
                                              teacher_fn)
        measured = export_and_measure(member.fn, tuned_vars, x1,
                                      os.path.join(workdir, "onnx", f"member{k}.onnx"),
                                      config.device, runs=config.measure_runs)
        rows.append({"blocks_removed": k, "removed": [b.label for b in removed],
                     "removed_ids": [b.id for b in removed],
                     "last_removed": removed[-1].label if removed else None,
                     "choice": dataclasses.asdict(choice) if choice else None,
                     "accuracy_before_finetune": accuracy,
                     "accuracy_after_finetune": tuned_acc if tuned_acc is not None else accuracy,
                     "removed_params": member.removed_params, **measured})
        print(f"member {k}: {k} blocks removed, test accuracy {accuracy:.4f} -> "
              f"{rows[-1]['accuracy_after_finetune']:.4f} after KD, "
              f"{measured['flops'] / 1e6:.2f} MFLOPs, {measured['batch1_median_ms']:.3f} ms")

    result = {"experiment": config.get("experiment_name", "blocks"), "model": config.teacher.model,
              "teacher": summary["key"], "device": config.device,
              "settings": dataclasses.asdict(settings),
              "finetune_steps": int(config.finetune.get("steps", 0)),
              "latency_source": config.family.latency_source,
              "blocks": [b.as_dict() for b in analysis.blocks],
              "rejected": [list(r) for r in analysis.rejected],
              "family": rows, "wall_seconds": time.time() - start}
    text = _table(rows)
    print(text)
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(workdir, "result.md"), "w") as f:
        f.write(text + "\n")
    return result
