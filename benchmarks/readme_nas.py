"""The README's NAS paragraph: predictor quality, the chosen architecture against the
teacher and the baselines, and the verdict the result file supports (a region renderer of
``benchmarks/readme_tables.REGIONS``)."""
from benchmarks.readme_format import paragraph


def nas(results) -> str:
    """Predictor quality, the chosen architecture against the teacher and the width-scaled
    baselines, all latencies from the one side-by-side measurement in the file."""
    r = results["nas"]
    p, t = r["predictors"], r["timings"]
    models = {m["name"]: m for m in r["models"]}
    teacher = models["teacher (ResNet-20)"]
    claim = r["claim_check"]
    chosen = next(m for m in r["models"] if m.get("kind") == "searched" and (
        m.get("arch") == claim["arch"] if "arch" in m      # rows after equal fine-tuning
        else m["test_accuracy"] == claim["assembled_test_accuracy"]))
    scaled = [m for m in r["models"] if m.get("kind") == "scaled"]
    tau = lambda target, k: f"{p[target][k]['kendall_tau']:.2f}"  # noqa: E731
    latency_taus = [p["latency_ms"][k]["kendall_tau"] for k in p["latency_ms"]
                    if k not in ("train", "test", "flops")]
    baselines = " and ".join(
        f"{m['test_accuracy'] * 100:.1f}% ({m['name'].split(' ')[1]}, {m['latency_ms']:.3f} ms)"
        for m in scaled)
    return paragraph(f"**NAS** (`python benchmarks/nas.py`, `benchmarks/results/nas.md`; "
            f"{t['total_s'] / 60:.0f} min end to end on the\nshared machine: "
            f"{len(r['students'])} students distilled 800 steps each in "
            f"{t['distill_s'] / 60:.0f} min, 100 architectures assembled\nand measured in "
            f"{t['measure_s'] / 60:.0f} min, predictors, NSGA-II, a "
            f"{r['claim_check']['steps']}-step fine-tune of the chosen one).\n"
            f"Predictors on {p['accuracy']['test']} held-out architectures: accuracy Kendall tau "
            f"{tau('accuracy', 'gnn')} (GNN), {tau('accuracy', 'donna_linear_nsr')} (DONNA's "
            f"linear\nmodel on block NSR), {tau('accuracy', 'onehot_mlp')} (one-hot MLP), "
            f"{tau('accuracy', 'flops')} (FLOPs); latency tau {min(latency_taus):.2f}-"
            f"{max(latency_taus):.2f} (FLOPs {tau('latency_ms', 'flops')}; measured\nwhile other "
            "jobs shared the cores). The chosen architecture under the latency budget ("
            f"{r['latency_budget_ms']:.3f} ms) runs "
            f"{teacher['latency_ms'] / chosen['latency_ms']:.2f}x faster than the teacher "
            f"({chosen['latency_ms']:.3f} vs "
            f"{teacher['latency_ms']:.3f} ms, measured side by side) at "
            f"{r['claim_check']['assembled_test_accuracy'] * 100:.1f}% as assembled and\n"
            f"{r['claim_check']['finetuned_test_accuracy'] * 100:.1f}% after "
            f"{r['claim_check']['steps']} steps of end-to-end KD; width-scaled ResNet-20s "
            f"trained {r.get('finetune', {}).get('steps', 1500)} KD steps reach {baselines}"
            + _nas_verdict(r))


def _nas_verdict(r) -> str:
    """What the file says of the search against the baselines."""
    if "speedup_vs_best_baseline" not in r:      # the run before equal fine-tuning
        return (", so on this small space the searched models do not yet beat the scaled "
                "baselines: assembled students compound their errors, and the predictors "
                "see only 100 architectures.")
    speedup = r["speedup_vs_best_baseline"]
    if speedup is None:
        return (". After the same fine-tune, some baseline has no searched model as "
                "accurate: the search does not beat it.")
    return (f". After the same fine-tune, the fastest searched model at least as accurate "
            f"as each baseline is at least {speedup:.2f}x faster than it.")
