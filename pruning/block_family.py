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
be compared on one plot (``benchmarks/block_pruning.py``); that program is
``experiments/block_family.py``.
"""
import dataclasses
import os
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from core import fast_depthwise, losses
from data import pipeline
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
