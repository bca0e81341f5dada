"""The README's rendered regions: one renderer per kind of table or paragraph, and
``REGIONS``, which names the result files each region reads.

Why a module of its own: ``benchmarks/render_readme.py`` owns the marker machinery and the
``--check``; what a region says about a result kind (which columns, which figures the
sentence under a table quotes) changes with the experiments, and lives here. Each renderer
takes the loaded result files by name and returns markdown. Pure standard library.
"""
from typing import Callable, Dict, Tuple

from benchmarks.readme_format import bold_best, paragraph, pct, table
from benchmarks.readme_lowrank import lowrank
from benchmarks.readme_nas import nas


# --------------------------------------------------------------------------- pruning

def showcase(results) -> str:
    """The default experiment's before/after table and the sentence under it."""
    r = results["prune_resnet20_2x"]
    rows = [(name, pct(m["accuracy"]), f"{m['flops'] / 1e6:.2f}", f"{m['params'] / 1e3:.1f}",
             f"{m['batch1_median_ms']:.3f}", f"{m['batch32_median_ms']:.2f}")
            for name, m in (("teacher", r["before"]), ("pruned + fine-tuned", r["after"]))]
    text = table(("model", "test acc", "FLOPs (M)", "params (k)", "ORT b1 (ms)",
                  "ORT b32 (ms)"), rows)
    return text + "\n\n" + paragraph(
        f"Right after pruning (before the 2-epoch fine-tune): "
        f"{pct(r['accuracy_after_pruning'])}%. FLOPs {r['flops_reduction']:.2f}x fewer "
        f"({_rounding(r)}), onnxruntime {r['speedup_batch1']:.2f}x faster at batch 1 and "
        f"{r['speedup_batch32']:.2f}x at batch 32.")


def _rounding(result) -> str:
    """How the run's kept channel counts met the FLOPs budget (its recorded settings)."""
    if result.get("settings", {}).get("gates", {}).get("fit_budget"):
        return ("kept counts rounded to multiples of 8, then stepped down to the budget one "
                "multiple at a time: `gates.fit_budget`")
    return "gates reach the 2x budget; rounding kept counts up to multiples of 8 gives back some"


def real_showcase(results) -> str:
    """The default experiment (a real pretrained model): before/after, int8, the goal."""
    r = results["prune_selfie_2x"]
    litert = "litert_batch1_median_ms" in r["before"]
    rows = [(name, f"{m['fidelity']:.3f}", f"{m['flops'] / 1e6:.1f}",
             f"{m['params'] / 1e3:.1f}", f"{m['batch1_median_ms']:.2f}")
            + ((f"{m['litert_batch1_median_ms']:.2f}",) if litert else ())
            for name, m in (("original", r["before"]), ("pruned + fine-tuned", r["after"]))]
    text = table(("model", "mask IoU vs original", "MFLOPs", "params (k)", "ORT b1 (ms)")
                 + (("LiteRT b1 (ms)",) if litert else ()), rows)
    int8 = r.get("int8", {}).get("rows", {})
    quantized = "; ".join(
        f"int8 of the pruned model, {name.replace('_', ' ')}: IoU {m['fidelity']:.3f} at "
        f"{m['speedup_vs_float']:.2f}x its float speed" for name, m in int8.items()
        if name != "float")
    ratio = r["speedup_batch1"] / r["flops_reduction"]
    missed = [goal for goal, met in (
        (f"IoU 0.95 at 2x (have {r['fidelity_after_finetune']:.3f})",
         r["fidelity_after_finetune"] >= 0.95 and r["flops_reduction"] >= 2.0),
        (f"speed-up at least 0.9x the FLOPs reduction (have {ratio:.2f}x)", ratio >= 0.9))
        if not met]
    multiple = r.get("settings", {}).get("gates", {}).get("multiple")
    return text + "\n\n" + paragraph(
        f"Mask IoU against the original on {r['eval_images']} held-out real images: "
        f"{r['fidelity_after_pruning']:.3f} right after pruning, "
        f"{r['fidelity_after_finetune']:.3f} after the fine-tune, at "
        f"{r['flops_reduction']:.2f}x fewer FLOPs and {r['speedup_batch1']:.2f}x the "
        f"original's onnxruntime speed at batch 1"
        + (f" ({r['litert_speedup_batch1']:.2f}x in LiteRT)" if litert else "")
        + (f", kept widths in multiples of {multiple}" if multiple else "")
        + f" ({r['wall_seconds'] / 60:.0f} min). "
        + (f"{quantized}. " if quantized else "")
        + ("Short of the goal: " + "; ".join(missed) + "." if missed
           else "Both goals met (IoU 0.95 at 2x, speed-up at least 0.9x the FLOPs reduction)."))


PRUNING_EXPERIMENTS = (   # (result file, how the README names the run and its overrides)
    ("prune_resnet20_2x", "`prune_resnet20_2x`"),
    ("prune_resnet20_4x", "`prune_resnet20_4x`"),
    ("prune_resnet20_latency", "`prune_resnet20_latency` (half the predicted b1 latency)"),
    ("prune_resnet20_latency_match",
     "`prune_resnet20_latency_match` (the 2x run's b1 latency, free channels kept)"),
    ("prune_vit_2x", "`prune_vit_2x` (300 gate + 300 FT steps)"),
    ("prune_vit_4x", "`prune_vit_4x` (300 + 300)"),
    ("prune_mobilenetv2_2x", "`prune_mobilenetv2_2x` (150 + 150 at batch 64)"),
    ("prune_mobilenetv2_4x",
     "`prune_mobilenetv2_4x` (150 + 150 at batch 64, `gates.init_spread=4`)"),
)


def pruning_experiments(results) -> str:
    rows = []
    for name, label in PRUNING_EXPERIMENTS:
        r = results[name]
        rows.append((label, pct(r["accuracy_before"]), pct(r["accuracy_after_pruning"]),
                     pct(r["accuracy_after_finetune"]), f"{r['flops_reduction']:.2f}x",
                     f"{r['before']['params'] / 1e3:.0f} → {r['after']['params'] / 1e3:.0f}",
                     f"{r['speedup_batch1']:.2f}x / {r['speedup_batch32']:.2f}x"))
    text = table(("experiment (overrides)", "teacher", "right after pruning",
                  "after KD fine-tune", "FLOPs reduction", "params (k)", "speed-up"), rows)
    return text + "\n\n" + _latency_match_sentence(results)


def _latency_match_sentence(results) -> str:
    """The latency-budget run against the FLOPs-budget run it matches."""
    flops, match = results["prune_resnet20_2x"], results["prune_resnet20_latency_match"]
    describe = lambda r: (f"{pct(r['accuracy_after_finetune'])}% at "  # noqa: E731
                          f"{r['flops_reduction']:.2f}x fewer FLOPs, "
                          f"{r['speedup_batch1']:.2f}x / {r['speedup_batch32']:.2f}x faster")
    return paragraph(
        f"`prune_resnet20_latency_match` budgets the batch-1 latency of the 2x run "
        f"({match['target_ratio']:.2f} of the full model's prediction) instead of its "
        f"FLOPs, and steps kept widths back up where the latency table says the channels "
        f"are free (`gates.fill_free`): {describe(match)}, against {describe(flops)} for "
        f"`prune_resnet20_2x` (one seed each).")


TORCH_PRUNING_METHODS = (
    ("tp_groupnorm", "Torch-Pruning, group-norm importance"),
    ("tp_magnitude", "Torch-Pruning, L1 magnitude"),
    ("tp_groupnorm_ce", "Torch-Pruning, group-norm, fine-tuned with its cross-entropy"),
    ("tp_magnitude_ce", "Torch-Pruning, L1, fine-tuned with its cross-entropy"),
    ("ours_magnitude", "ours, group L1 magnitude"),
    ("ours_learned", "ours, learned gates"),
    ("ours_learned_ranked", "ours, learned gates, rank-spread start"),
)


def _bold_accuracies(result, target) -> Dict[str, str]:
    """Accuracy after the fine-tune per method at one FLOPs target (mean +- sd over the
    seeds where there are several), the best mean in bold."""
    rows = {r["method"]: r for r in result["rows"] if r["target"] == target}
    methods = [m for m, _ in TORCH_PRUNING_METHODS if m in rows]
    means = [rows[m]["accuracy_after_finetune"] for m in methods]
    spreads = [f" +- {rows[m]['accuracy_after_finetune_sd'] * 100:.2f}"
               if len(rows[m].get("seeds", [])) > 1 else "" for m in methods]
    return {m: a + sd for m, a, sd in zip(methods, bold_best(means), spreads)}


def _speedups_b1(result, target) -> Dict[str, float]:
    return {r["method"]: r["speedup_batch1"] for r in result["rows"] if r["target"] == target}


def prune_vs_torch_pruning(results) -> str:
    """Accuracy after the fine-tune (speed-up at batch 1) per method and target, the best
    accuracy of each column in bold, and the range of speed-up per FLOPs reduction."""
    result = results["prune_vs_torch_pruning"]
    targets = sorted({r["target"] for r in result["rows"] if r["target"] != 1})
    columns = []
    for target in targets:
        accuracies, speedups = _bold_accuracies(result, target), _speedups_b1(result, target)
        columns.append({m: f"{accuracies[m]} ({speedups[m]:.2f}x)" for m in accuracies})
    shown = [(m, label) for m, label in TORCH_PRUNING_METHODS if m in columns[0]]
    body = table(["method"] + [f"{t}x fewer FLOPs" for t in targets],
                 [[label] + [c.get(m, "") for c in columns] for m, label in shown])
    return body + "\n\n" + paragraph(_long_budget(results["prune_vs_torch_pruning_long"])
                                     + " " + _speedup_per_flops(result))


def _long_budget(result) -> str:
    accuracies = _bold_accuracies(result, 2)
    budget = result["budget"]
    return (f"At a longer budget (`--steps {budget['steps']} --gate-steps {budget['gate_steps']}"
            " --targets 2 --tag _long --workdir\nruns/prune_vs_torch_pruning_long`, "
            f"{budget['steps'] + budget['gate_steps']} steps, "
            "`benchmarks/results/prune_vs_torch_pruning_long.md`)\n"
            f"at 2x: Torch-Pruning {accuracies['tp_groupnorm']} (group-norm) / "
            f"{accuracies['tp_magnitude']} (L1); ours {accuracies['ours_magnitude']} "
            f"(magnitude), {accuracies['ours_learned']} (learned\ngates), "
            f"{accuracies['ours_learned_ranked']} (rank-spread gates). The 4x rows of that "
            "budget are still to be run.")


def _speedup_per_flops(result) -> str:
    def spread(prefix):
        values = [r[f"speedup_over_flops_batch{b}"] for r in result["rows"]
                  if r["method"].startswith(prefix) and r["target"] != 1 for b in (1, 32)]
        return min(values), max(values)
    ours, peer = spread("ours_"), spread("tp_")
    best = max(ours[1], peer[1])
    claim = ("no method reaches a speed-up of 0.9x the FLOPs reduction" if best < 0.9 else
             f"the best speed-up is {best:.2f}x the FLOPs reduction")
    return (f"On ResNet-20 {claim} (ours {ours[0]:.2f}-{ours[1]:.2f},\n"
            f"Torch-Pruning {peer[0]:.2f}-{peer[1]:.2f}, speed-up / FLOPs reduction at batch 1 "
            "and 32).")


def group_analysis(results) -> str:
    rows = []
    for r in results["group_analysis"]["results"]:
        ours, tp, first = r["ours"], r["torch_pruning"], r.get("first_call")
        rows.append((r["model"], f"{ours['trace_s']:.3f}", f"{ours['analysis_s']:.3f}",
                     f"{tp['build_and_groups_s']:.3f}",
                     f"{r['speedup_trace_plus_analysis']:.1f}x",
                     f"{r['speedup_analysis']:.1f}x",
                     (f"{first['ours_s']:.3f} / {first['torch_pruning_s']:.3f} "
                      f"({first['speedup']:.1f}x)") if first else "not measured",
                     f"{ours['groups']} ({ours['prunable_groups']}) / {tp['groups']}"))
    return table(("model", "ours: trace (s)", "ours: analysis (s)", "Torch-Pruning (s)",
                  "speed-up end to end (trace + analysis)", "speed-up (analysis alone)",
                  "first call end to end: ours / TP (s)", "groups ours (prunable) / TP"),
                 rows)


# ---------------------------------------------------------------------- quantization

def quant_model(results, name) -> dict:
    return next(m for m in results["quant"]["models"] if m["experiment"] == name)


def _best_int8(model) -> str:
    """The onnxruntime configuration of our best post-training quantization."""
    return "ours_" + model["best_ptq"]


def _int8_speedup(model, batch) -> float:
    return _latency(model, "float", batch) / _latency(model, _best_int8(model), batch)


def _latency(model, config, batch) -> float:
    return model["latency_ms"][config][f"batch{batch}_median_ms"]


def quant_resnet20(results) -> str:
    """The ResNet-20 teacher: JAX fake-quant and onnxruntime accuracy, latency; a QAT
    batch-32 time far from PTQ's (same integer graph) is marked as load noise."""
    m = quant_model(results, "resnet20")
    acc, ort, best = m["accuracy"], m["onnx_accuracy"], _best_int8(m)
    times = lambda c: (f"{_latency(m, c, 1):.3f}", f"{_latency(m, c, 32):.2f}")  # noqa: E731
    qat_b32 = f"{_latency(m, 'ours_qat', 32):.2f}"
    noisy = abs(_latency(m, "ours_qat", 32) / _latency(m, best, 32) - 1) > 0.25 and \
        m["parity"]["qat"]["integer_ops"] == m["parity"][m["best_ptq"]]["integer_ops"]
    rows = [("float", pct(acc["float"]), pct(ort["float"])) + times("float"),
            ("PTQ per-tensor (+ equalization + bias correction)",
             f"{pct(acc['ptq_per_tensor'])} ({pct(acc['ptq_per_tensor_cle_bc'])})", "", "", ""),
            ("PTQ per-channel (+ equalization + bias correction)",
             f"{pct(acc['ptq_per_channel'])} ({pct(acc['ptq_per_channel_cle_bc'])})",
             pct(ort[best])) + times(best),
            (f"QAT, {m['qat_steps']} steps", pct(acc["qat"]), pct(ort["ours_qat"]),
             f"{_latency(m, 'ours_qat', 1):.3f}", qat_b32 + ("*" if noisy else "")),
            ("onnxruntime `quantize_static` (QDQ, per-channel)", "",
             pct(ort["ort_quantize_static"])) + times("ort_quantize_static")]
    text = table(("configuration", "JAX fake-quant acc", "onnxruntime acc", "batch 1 (ms)",
                  "batch 32 (ms)"), rows)
    note = ("; *the QAT model has the same graph as PTQ, its batch-32 time is load noise"
            if noisy else "")
    return text + "\n\n" + paragraph(
        f"int8 runs {_int8_speedup(m, 1):.2f}x (batch 1) to {_int8_speedup(m, 32):.2f}x "
        f"(batch 32) faster than float with QLinearConv/QLinearAdd kernels{note}.")


QUANT_MODELS = (("mobilenetv2", "MobileNetV2"), ("pruned_resnet20", "pruned ResNet-20"),
                ("vit", "ViT"))


def quant_models(results) -> str:
    """The other quantized models: onnxruntime accuracy per method, int8 speed-up; then
    the prune-then-quantize latency against its pruned float model (one run)."""
    rows = []
    for name, label in QUANT_MODELS:
        m = quant_model(results, name)
        ort, best = m["onnx_accuracy"], _best_int8(m)
        speedup = [_int8_speedup(m, b) for b in (1, 32)]
        rows.append((f"{label} ({pct(ort['float'])}%)", pct(ort["float"]),
                     pct(m["accuracy"]["ptq_per_tensor"]), pct(ort[best]),
                     pct(ort["ours_qat"]), pct(ort["ort_quantize_static"]),
                     f"{speedup[0]:.2f}x / {speedup[1]:.2f}x"))
    text = table(("model", "float", "PTQ per-tensor (JAX)",
                  "ours PTQ per-channel (best of with/without CLE+BC)", "ours QAT",
                  "`quantize_static`", "int8 speed-up b1 / b32"), rows)
    pruned, vit = quant_model(results, "pruned_resnet20"), quant_model(results, "vit")
    load = lambda m: m["machine"]["load_average_at_start"]  # noqa: E731
    return text + "\n\n" + paragraph(
        f"The pruned and quantized ResNet-20 runs at "
            f"{_latency(pruned, _best_int8(pruned), 1):.3f} ms against its pruned float "
            f"model's {_latency(pruned, 'float', 1):.3f} ms\n(one run, load "
            f"{load(pruned):.1f}).\n" + _vit_int8_sentence(vit))


def _vit_int8_sentence(vit) -> str:
    """How int8 fares on the ViT against float and ``quantize_static`` at batch 1, and,
    when the result records it, how many activation quantizers the placement left out."""
    best = _best_int8(vit)
    ours = _latency(vit, "float", 1) / _latency(vit, best, 1)
    peer = _latency(vit, "float", 1) / _latency(vit, "ort_quantize_static", 1)
    sentence = (f"On the ViT, int8 runs {ours:.2f}x the speed of float at batch 1 "
                f"({'faster' if ours > 1 else 'slower'}; onnxruntime's own quantizer "
                f"{peer:.2f}x)")
    left = vit["parity"][vit["best_ptq"]].get("sites_left_float")
    if left is None:
        return sentence + (": only the matmuls run integer kernels and LayerNorm, GELU and "
                           "softmax stay float between QuantizeLinear/DequantizeLinear pairs.")
    ops = vit["graph_ops"]
    return sentence + (f": the attention projections export as MatMuls with integer "
                       f"kernels, and {left} activation quantizers that no integer kernel "
                       f"reads (before LayerNorm, GELU, softmax) are left out: "
                       f"{ops[best]['QuantizeLinear']} QuantizeLinear nodes against "
                       f"{ops['ort_quantize_static']['QuantizeLinear']} in "
                       f"`quantize_static`'s graph.")


# ------------------------------------------------------------------- latency model

def latency_model(results) -> str:
    """Every table mode and statistic per family, the row the gates' budget uses, and the
    pooled rows' tau counted within families too."""
    summary = results["latency_model"]["summary"]
    taus = ("kendall_tau", "kendall_tau_within_families", "flops_kendall_tau",
            "flops_kendall_tau_within_families")
    rows = [(mode, family, f"{by_family[family]['within_10pct'] * 100:.0f}%",
             *(f"{by_family[family][tau]:.3f}" for tau in taus))
            for mode, by_family in summary.items() for family in ("resnet20", "mobilenetv2", "all")]
    p10, budget = summary["exact/p10"], summary["grid/median"]
    line = lambda r, f: f"{r[f]['within_10pct'] * 100:.0f}% / {r[f]['kendall_tau']:.3f}"  # noqa
    return (paragraph(
        f"The best row, exact op tables and the p10 statistic: {line(p10, 'all')} (within 10% / "
        f"Kendall tau) over both families (ResNet-20 {line(p10, 'resnet20')}, MobileNetV2 "
        f"{line(p10, 'mobilenetv2')}). The differentiable budget of the learned gates uses "
        f"grid tables and the median: {line(budget, 'all')} (ResNet-20 "
        f"{line(budget, 'resnet20')}, MobileNetV2 {line(budget, 'mobilenetv2')}, where FLOPs "
        f"reach tau {budget['mobilenetv2']['flops_kendall_tau']:.3f}). The pooled rows count "
        "pairs across the two families, which almost any predictor orders right; counted "
        f"within families the budget's tau is {budget['all']['kendall_tau_within_families']:.3f}"
        f" against FLOPs' {budget['all']['flops_kendall_tau_within_families']:.3f}.") + "\n\n"
        + table(("table mode / statistic", "family", "within 10%", "Kendall tau",
                 "tau within families", "FLOPs tau", "FLOPs tau within families"), rows))


# ------------------------------------------------------------------- block pruning

def block_pruning_resnet20(results) -> str:
    r = results["block_pruning_resnet20"]
    rows = [(m["blocks_removed"], f"{pct(m['accuracy_before_finetune'])} / "
             f"{pct(m['accuracy'])}", f"{m['flops'] / 1e6:.2f}", f"{m['batch1_ms']:.3f}",
             f"{m['batch32_ms']:.2f}") for m in r["family"]]
    rows += [(f"channel-pruned (`{c['name']}`)", pct(c["accuracy"]),
              f"{c['flops'] / 1e6:.2f}", f"{c['batch1_ms']:.3f}", f"{c['batch32_ms']:.2f}")
             for c in r["channel_pruned"]]
    return table(("blocks removed", "acc before / after KD", "FLOPs (M)", "b1 (ms)",
                  "b32 (ms)"), rows) + "\n\n" + paragraph(_block_summary(r))


def _block_summary(r) -> str:
    """The family against every channel-pruned model of the same teacher at equal latency
    (``batch1_ms``: the interleaved rounds that timed family and channel-pruned models
    together, not each member's own earlier measurement), and the speed-up per FLOP of the
    member nearest in FLOPs to the first channel-pruned model."""
    at = {(e["model"], e["batch"]): e for e in r["equal_latency"]}
    teacher = r["family"][0]
    speed = lambda m: teacher["batch1_ms"] / m["batch1_ms"]  # noqa: E731
    fewer = lambda m: teacher["flops"] / m["flops"]  # noqa: E731
    sentences = []
    for c in r["channel_pruned"]:
        one, thirty_two = at[(c["name"], 1)], at[(c["name"], 32)]
        if one["family_accuracy_interpolated"] is not None:
            sentences.append(
                f"At the latency of `{c['name']}` the family reaches "
                f"{pct(one['family_accuracy_interpolated'])}% (batch 1) / "
                f"{pct(thirty_two['family_accuracy_interpolated'])}% (batch 32) against its "
                f"{pct(c['accuracy'])}%.")
        else:
            more = "more" if one["accuracy"] > one["nearest_member_accuracy"] else "less"
            sentences.append(
                f"`{c['name']}` is {more} accurate than the nearest member at about the same "
                f"latency ({pct(one['accuracy'])}% at {one['latency_ms']:.3f} ms against "
                f"{pct(one['nearest_member_accuracy'])}% at {one['nearest_member_ms']:.3f} ms).")
    channel = r["channel_pruned"][0]
    member = min(r["family"][1:], key=lambda m: abs(m["flops"] - channel["flops"]))
    sentences.append(
        f"Removing blocks gives the larger speed-up per FLOP ({member['blocks_removed']} "
        f"blocks: {speed(member):.2f}x at batch 1 for {fewer(member):.2f}x fewer FLOPs; "
        f"`{channel['name']}` {speed(channel):.2f}x for {fewer(channel):.2f}x)."
        if speed(member) / fewer(member) > speed(channel) / fewer(channel) else
        f"Channel pruning gives the larger speed-up per FLOP (`{channel['name']}`: "
        f"{speed(channel):.2f}x at batch 1 for {fewer(channel):.2f}x fewer FLOPs; "
        f"{member['blocks_removed']} blocks {speed(member):.2f}x for {fewer(member):.2f}x).")
    return " ".join(sentences) + " Family and channel-pruned models timed in the same rounds."


def _members_vs_channel_pruned(label, r) -> Tuple[str, bool]:
    """How the 2x channel-pruned model compares with every family member: whether it is
    faster than all, and which members (if any) are more accurate."""
    channel2 = next(c for c in r["channel_pruned"] if c["name"].endswith("_2x"))
    members = r["family"][1:]
    faster = all(channel2["batch1_ms"] < m["batch1_ms"] for m in members)
    better = [m for m in members if m["accuracy"] >= channel2["accuracy"]]
    text = (f"{label} {pct(channel2['accuracy'])}% at {channel2['batch1_ms']:.3f} ms, "
            f"{'faster than every member' if faster else 'not faster than every member'}")
    if better:
        text += " and more accurate than all but " + ", ".join(
            f"the {m['blocks_removed']}-block member ({pct(m['accuracy'])}% at "
            f"{m['batch1_ms']:.3f} ms)" for m in better)
    else:
        text += " and more accurate than every member"
    return text, faster


def block_pruning_vit_mobilenetv2(results) -> str:
    vit, mb = results["block_pruning_vit"], results["block_pruning_mobilenetv2"]
    vit_t, vit_s, mb_t, mb_s = vit["family"][0], vit["family"][-1], mb["family"][0], \
        mb["family"][-1]
    vit_text, vit_faster = _members_vs_channel_pruned("ViT", vit)
    mb_text, mb_faster = _members_vs_channel_pruned("MobileNetV2", mb)
    conclusion = (": removing whole blocks pays on the ResNet, not on these two"
                  if vit_faster and mb_faster else "")
    return paragraph(
        f"On the ViT (`--model=vit --set family.members=4 --set finetune.steps=100`) every "
        f"member drops an MLP sub-block: {vit_s['blocks_removed']} removed reach "
        f"{pct(vit_s['accuracy'])}% at {vit_s['batch1_ms']:.3f} ms (teacher "
        f"{pct(vit_t['accuracy'])}%, {vit_t['batch1_ms']:.3f} ms). On MobileNetV2 "
        "(`--model=mobilenetv2 --set family.members=3 --set finetune.steps=60 --set "
        f"finetune.batch_size=64`) {mb_s['blocks_removed']} inverted residuals removed reach "
        f"{pct(mb_s['accuracy'])}% at {mb_s['batch1_ms']:.3f} ms (teacher "
        f"{mb_t['batch1_ms']:.3f} ms). The 2x channel-pruned model, measured in the same "
        f"rounds at batch 1: {vit_text}; {mb_text}{conclusion} "
        "(`benchmarks/results/block_pruning_{vit,mobilenetv2}.md`).")


# ------------------------------------------------------------------------ the table

REGIONS: Dict[str, Tuple[Tuple[str, ...], Callable]] = {
    "prune_selfie_2x": (("prune_selfie_2x",), real_showcase),
    "prune_resnet20_2x": (("prune_resnet20_2x",), showcase),
    "pruning_experiments": (tuple(n for n, _ in PRUNING_EXPERIMENTS), pruning_experiments),
    "prune_vs_torch_pruning": (("prune_vs_torch_pruning", "prune_vs_torch_pruning_long"),
                               prune_vs_torch_pruning),
    "group_analysis": (("group_analysis",), group_analysis),
    "quant_resnet20": (("quant",), quant_resnet20),
    "quant_models": (("quant",), quant_models),
    "latency_model": (("latency_model",), latency_model),
    "block_pruning_resnet20": (("block_pruning_resnet20",), block_pruning_resnet20),
    "block_pruning_vit_mobilenetv2": (("block_pruning_vit", "block_pruning_mobilenetv2"),
                                      block_pruning_vit_mobilenetv2),
    "nas": (("nas",), nas),
    "lowrank": (("lowrank_mixer", "lowrank_resnet20", "lowrank_vit"), lowrank),
}
