"""Figures the README quotes in hand-written prose, checked against the result files.

Why: a few figures sit in sentences too individual to render (a teacher's accuracy in the
setup notes, a step count in a command line). ``PROSE_FIGURES`` lists each one as the
README phrase, the files it quotes and the figures as the README writes them, and
``prose_problems`` says where the prose and the files disagree, so a figure can be kept
by hand without drifting. Pure standard library.
"""
import re
from typing import Callable, Dict, List, Tuple

from benchmarks.readme_format import pct
from benchmarks.readme_tables import PRUNING_EXPERIMENTS, quant_model


def _resnet20_speedup_over_flops(results) -> Tuple[str, str]:
    ratios = [results[n][f"speedup_batch{b}"] / results[n]["flops_reduction"]
              for n, _ in PRUNING_EXPERIMENTS if n.startswith("prune_resnet20") for b in (1, 32)]
    return f"{min(ratios):.1f}", f"{max(ratios):.1f}"


def _quant_steps(name):
    return lambda results: str(quant_model(results, name)["qat_steps"])


def _budget(results) -> dict:
    """The step and learning-rate budget of the Torch-Pruning comparison."""
    return results["prune_vs_torch_pruning"]["budget"]


def _block_pruning_steps(results) -> str:
    return str(results["block_pruning_resnet20"]["finetune_steps"])


# (README phrase with {} for each figure, the files it quotes, the figures as the README
# writes them). Whitespace in the phrase matches any run of whitespace (line breaks).
PROSE_FIGURES: Tuple[Tuple[str, Tuple[str, ...], Callable], ...] = (
    ("trains its teacher first ({}% test accuracy", ("prune_resnet20_2x",),
     lambda r: pct(r["prune_resnet20_2x"]["accuracy_before"])),
    ("crop/flip augmentation, **{}%** ({}% validation", ("prune_vs_torch_pruning",),
     lambda r: (pct(r["prune_vs_torch_pruning"]["teacher"]["test_accuracy"]),
                pct(r["prune_vs_torch_pruning"]["teacher"]["validation_accuracy"]))),
    ("MobileNetV2, 1 epoch, {}%", ("prune_mobilenetv2_2x",),
     lambda r: pct(r["prune_mobilenetv2_2x"]["accuracy_before"])),
    ("ViT, 3 epochs of AdamW, {}%", ("prune_vit_2x",),
     lambda r: pct(r["prune_vit_2x"]["accuracy_before"])),
    ("MLP-Mixer, 3 epochs of AdamW, {}%", ("lowrank_mixer",),
     lambda r: pct(r["lowrank_mixer"]["original"]["test_accuracy"])),
    ("the last run stopped at {} models: mismatches {}, crashes {}", ("fuzz",),
     lambda r: tuple(str(r["fuzz"][k]) for k in ("models", "mismatches", "crashes"))),
    ("trails the FLOPs reduction ({}-{}x of it)", tuple(n for n, _ in PRUNING_EXPERIMENTS),
     _resnet20_speedup_over_flops),
    ("MobileNetV2 4x gates land on the budget ({}x)", ("prune_mobilenetv2_4x",),
     lambda r: f"{r['prune_mobilenetv2_4x']['flops_reduction']:.2f}"),
    ("our gate learning rate chosen on validation from {} and {};", ("prune_vs_torch_pruning",),
     lambda r: tuple(f"{lr:g}" for lr in _budget(r)["gate_lrs"])),
    ("fine-tuned with the same {} steps", ("prune_vs_torch_pruning",),
     lambda r: str(_budget(r)["steps"] + _budget(r)["gate_steps"])),
    ("the learned gates spend {} of those steps", ("prune_vs_torch_pruning",),
     lambda r: str(_budget(r)["gate_steps"])),
    ("group_analysis.py`, medians of {}, one thread", ("group_analysis",),
     lambda r: str(r["group_analysis"]["runs"])),
    ("benchmarks/quant.py --qat-steps {}`", ("quant",), _quant_steps("resnet20")),
    ("--models mobilenetv2 --qat-steps {}`", ("quant",), _quant_steps("mobilenetv2")),
    ("{} random-width variants each of ResNet-20 and MobileNetV2", ("latency_model",),
     lambda r: str(r["latency_model"]["summary"]["exact/p10"]["resnet20"]["n"])),
    ("--model=resnet20 --set finetune.steps={}`", ("block_pruning_resnet20",),
     _block_pruning_steps),
    ("{} KD steps per member", ("block_pruning_resnet20",), _block_pruning_steps),
)


def _phrase_pattern(phrase: str) -> re.Pattern:
    parts = [r"\s+".join(re.escape(w) for w in piece.split()) for piece in phrase.split("{}")]
    for i, piece in enumerate(phrase.split("{}")):   # keep edge whitespace meaningful
        if piece[:1].isspace() and i > 0:
            parts[i] = r"\s+" + parts[i]
        if piece[-1:].isspace() and i < len(parts) - 1:
            parts[i] = parts[i] + r"\s+"
    return re.compile(r"(-?\d[\d.,]*?)".join(parts))


def prose_problems(prose: str, results: Dict[str, dict]) -> List[str]:
    """A line per ``PROSE_FIGURES`` phrase that is missing from ``prose``, appears more than
    once, or quotes figures other than ``results`` (the loaded files, by name) give."""
    problems = []
    for phrase, files, figures in PROSE_FIGURES:
        found = _phrase_pattern(phrase).findall(prose)
        expected = figures(results)
        expected = expected if isinstance(expected, tuple) else (expected,)
        if len(found) != 1:
            problems.append(f"phrase {phrase!r} found {len(found)} times in the README prose")
            continue
        quoted = found[0] if isinstance(found[0], tuple) else (found[0],)
        if tuple(quoted) != expected:
            problems.append(f"{phrase!r}: README says {quoted}, {', '.join(files)} "
                            f"give {expected}")
    return problems
