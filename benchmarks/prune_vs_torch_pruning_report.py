"""The table of the Torch-Pruning comparison (``benchmarks/prune_vs_torch_pruning.py``):
every setting a reader needs to judge the comparison (teacher, budgets, the peer's recipe,
the choices made on validation and the ones excluded) above one row per method and target,
accuracies as mean +- sd over seeds."""
from benchmarks import seeds, torch_side
from export import machine


def markdown(info, args, setup_summary, rows, chosen, grid):
    lines = [
        "# Pruning ResNet-20 (Fashion-MNIST): ours vs Torch-Pruning at the same FLOPs", "",
        f"Machine: {machine.line(info, 'jax', 'torch', 'torch-pruning', 'onnxruntime')} "
        f"({info['device']}, medians of interleaved rounds).", "",
        f"Teacher: {setup_summary['key']} (test accuracy {setup_summary['test_accuracy']:.4f})."
        f" Fine-tune: {args.steps} steps + {args.gate_steps} steps (the learned gates' "
        "training, whose weights take the fine-tune's optimizer, schedule and first batches; "
        "every other method fine-tunes those steps too), batch 128, SGD Nesterov, "
        "cosine schedule, KD from the teacher (T=4, alpha=0.9), BN statistics frozen. "
        f"Ranked initial spread {args.gate_init_spread:g}. Gate learning rate chosen on "
        f"validation (seed {args.seeds[0]}) from {', '.join(f'{lr:g}' for lr in args.gate_lrs)}: "
        + (", ".join(f"{g['method']} {g['target']}x {g['gate_lr']:g} (val. "
                     f"{100 * g['validation_accuracy']:.2f})" for g in grid if g["chosen"])
           or "-") + "." + "".join(
            f" {g['method']} {g['target']}x at {g['gate_lr']:g} missed the FLOPs target "
            "(excluded)." for g in grid if "off_target" in g), "",
        "Torch-Pruning runs its own recipe (reproduce/main.py): global ranking, progressive "
        f"pruning over {torch_side.TP_ITERATIVE_STEPS} steps until its MAC count falls by the "
        f"target, round_to={args.tp_round_to or 'none'}. Ours round kept counts to multiples of "
        f"{args.multiple}. Every model is within {100 * args.flops_tolerance:g}% of its FLOPs "
        "target (enforced before fine-tuning).", "",
        f"Seeds: {', '.join(map(str, args.seeds))} (accuracies: mean +- sd over seeds; other "
        "columns: means). Our variant chosen on the validation split: "
        + (", ".join(f"{t}x {m}" for t, m in chosen.items()) or "-") + ".", "",
        "MFLOPs = 2 x multiply-accumulates of convs and dense layers, the same count for both "
        "frameworks; TP MMACs = Torch-Pruning's own counter (used to set its ratio).", "",
        "| method | target | MFLOPs | FLOPs red. | TP MMACs | params (k) | acc. after prune "
        "| val. acc. | acc. after FT | ORT b1 (ms) | ORT b32 (ms) | speed-up b1 | speed-up b32 "
        "| speed-up / FLOPs red. (b1, b32) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def pct(row, field):
        return seeds.mean_sd(row, field) if row.get(field) is not None else "-"
    for r in rows:
        tp_macs = f"{r['tp_macs_m']:.2f}" if "tp_macs_m" in r else "-"
        lines.append(
            f"| {r['method']} | {r['target']}x | {r['mflops']:.2f} | "
            f"{r['flops_reduction']:.2f}x | {tp_macs} | {r['params'] / 1e3:.1f} | "
            f"{pct(r, 'accuracy_after_pruning')} | {pct(r, 'validation_accuracy')} | "
            f"{pct(r, 'accuracy_after_finetune')} | "
            f"{r['batch1_median_ms']:.3f} | {r['batch32_median_ms']:.2f} | "
            f"{r['speedup_batch1']:.2f}x | {r['speedup_batch32']:.2f}x | "
            f"{r['speedup_over_flops_batch1']:.2f}, {r['speedup_over_flops_batch32']:.2f} |")
    lines += ["", "Every model, Torch-Pruning's included, is exported by ours "
              "(export.to_onnx; a Torch-Pruning model is read back into the JAX ResNet-20 at "
              "its pruned widths and must give its logits); speed-ups are against "
              "teacher_jax. teacher_torch is the same teacher through torch.onnx.export, "
              "for the exporters' difference.", ""]
    return "\n".join(lines)
