"""The README's low-rank paragraphs: half-rank errors, accuracy at 2x fewer FLOPs and
onnxruntime speed-ups per teacher, with the training budget each run gave its methods
(a region renderer of ``benchmarks/readme_tables.REGIONS``)."""
from typing import List

from benchmarks.readme_format import paragraph, pct

METHOD_NAMES = {"svd": "SVD", "data": "data-aware", "learned": "learned"}


def _lowrank_errors(r) -> str:
    mean = r["equal_rank"]["mean"]
    return ", ".join(f"{METHOD_NAMES[m]} {mean[m]['isolated']:.3f} / "
                     f"{mean[m]['in_network']:.3f}" for m in METHOD_NAMES)


def _lowrank_at(r, target):
    return {b["method"]: b for b in r["budgets"] if b["flops_reduction_target"] == target}


def _lowrank_accuracies(r, target=2.0) -> str:
    at = _lowrank_at(r, target)
    return ", ".join(f"{METHOD_NAMES[m]} {pct(at[m]['test_accuracy'])} / "
                     f"{pct(at[m]['test_accuracy_finetuned'])}%" for m in METHOD_NAMES)


def _lowrank_speedups(r, target) -> List[float]:
    original = r["original"]["latency"]["median_ms"]
    return [original / b["latency"]["median_ms"] for b in _lowrank_at(r, target).values()]


def _lowrank_budget(r) -> str:
    """The training each method had: equal totals in runs that record ``training_steps``;
    older runs gave "learned" its refinement steps on top, and say so."""
    learn, tune = r["config"]["learn"]["steps"], r["config"]["finetune"]["steps"]
    if all("training_steps" in b for b in r["budgets"]):
        return (f"after equal training ({learn + tune} steps each: learned refines its factors "
                f"{learn} steps and distils {tune}, SVD and data-aware distil {learn + tune})")
    return (f"after a {tune}-step KD fine-tune (an older run: learned had also refined its "
            f"factors {learn} steps, so its budget was larger)")


def lowrank(results) -> str:
    """Half-rank errors (layer alone / inside the network), accuracy at 2x fewer FLOPs
    before / after the KD fine-tune, and onnxruntime speed-ups, per teacher."""
    mixer, resnet, vit = (results[f"lowrank_{m}"] for m in ("mixer", "resnet20", "vit"))
    steps = lambda r: r["config"]["finetune"]["steps"]  # noqa: E731
    teacher = lambda r: pct(r["original"]["test_accuracy"])  # noqa: E731
    r2, r15, v2 = (_lowrank_speedups(resnet, 2.0), _lowrank_speedups(resnet, 1.5),
                   _lowrank_speedups(vit, 2.0))
    m2 = _lowrank_speedups(mixer, 2.0)
    first = paragraph(
        "**Low-rank** (`python benchmarks/lowrank.py lowrank_mixer`, "
        f"`benchmarks/results/lowrank_mixer.md`; MLP-Mixer teacher, 3 epochs, {teacher(mixer)}%): "
        "mean output error at half rank, layer alone / inside the network: "
        f"{_lowrank_errors(mixer)}. At 2x fewer FLOPs, before / {_lowrank_budget(mixer)}: "
        f"{_lowrank_accuracies(mixer)}; {min(m2):.2f}-{max(m2):.2f}x faster in "
        "onnxruntime at batch 1. On the ResNet-20 teacher (`python benchmarks/lowrank.py "
        "lowrank_resnet20`, `benchmarks/results/lowrank_resnet20.md`; convs become a k x k conv "
        f"to r channels and a 1x1): half-rank error {_lowrank_errors(resnet)}. At 2x fewer "
        f"FLOPs, before / {_lowrank_budget(resnet)}: "
        f"{_lowrank_accuracies(resnet)} (teacher {teacher(resnet)}%). The factorized convs are "
        f"{'barely faster' if min(r2) >= 1 else 'no faster'} in onnxruntime "
        f"({min(r2):.2f}-{max(r2):.2f}x at 2x fewer FLOPs, "
        f"{min(r15):.2f}-{max(r15):.2f}x at 1.5x): two small convs cost more per FLOP than "
        "one. A latency budget (`budget={'latency': ...}`) prices every rank with the latency "
        "model instead of FLOPs (not run on these models yet).")
    second = paragraph(
        f"On the ViT teacher (`python run.py --exp=lowrank_vit --exp.finetune.steps={steps(vit)}`"
        f", `benchmarks/results/lowrank_vit.md`; {teacher(vit)}%): half-rank error "
        f"{_lowrank_errors(vit)}. At 2x fewer FLOPs, before / {_lowrank_budget(vit)}: "
        f"{_lowrank_accuracies(vit)}, all {min(v2):.2f}-{max(v2):.2f}x faster in "
        "onnxruntime at batch 1.")
    return first + "\n\n" + second
