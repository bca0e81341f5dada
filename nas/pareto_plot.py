"""The Pareto plot: accuracy vs device latency of the sampled architectures, the front the
predictors promised and what the front measured once assembled and run."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_fronts(sampled, front, teacher, path, budget_ms=None, extra=None):
    """``sampled``: rows with accuracy/latency_ms; ``front``: rows with predicted_* and
    test_accuracy/latency_ms; ``extra``: {label: [(latency_ms, accuracy), ...]}."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    pts = [(r["latency_ms"], r["accuracy"]) for r in sampled if r.get("latency_ms")]
    if pts:
        ax.scatter(*zip(*pts), s=10, c="0.7", label="sampled (validation, measured)")
    if front:
        pred = sorted((r["predicted_latency_ms"], r["predicted_accuracy"]) for r in front)
        meas = sorted((r["latency_ms"], r["test_accuracy"]) for r in front)
        ax.plot(*zip(*pred), "o--", c="tab:blue", label="front, predicted")
        ax.plot(*zip(*meas), "s-", c="tab:red", label="front, measured (test)")
    if teacher:
        ax.scatter([teacher["latency_ms"]], [teacher["test_accuracy"]], marker="*", s=150,
                   c="k", label="teacher", zorder=5)
    for label, points in (extra or {}).items():
        ax.plot(*zip(*sorted(points)), "^-", label=label)
    if budget_ms:
        ax.axvline(budget_ms, ls=":", c="0.4", label="latency budget")
    ax.set_xlabel("latency (ms, ONNX Runtime, batch 1)")
    ax.set_ylabel("top-1 accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_devices(study: dict, path: str) -> str:
    """The device-specific search at a glance: per device (a group of bars), the latency
    there of every device's choice at equal predicted accuracy, and of the teacher; the
    legend gives each choice's test accuracy. A device-specific search shows its own
    choice as the lowest bar of its group."""
    devices = study["devices"]
    bars = [(f"chosen for {d} ({study['choices'][d]['test_accuracy']:.2%})",
             study["choices"][d]["latency_ms"]) for d in devices]
    bars.append((f"teacher ({study['teacher']['test_accuracy']:.2%})",
                 study["teacher"]["latency_ms"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    width = 0.8 / len(bars)
    for k, (label, latency) in enumerate(bars):
        xs = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(devices))]
        ax.bar(xs, [latency[d] for d in devices], width, label=label,
               color="0.6" if k == len(bars) - 1 else None)
    ax.set_xticks(range(len(devices)))
    ax.set_xticklabels(devices)
    ax.set_ylabel("latency (ms, batch 1, p10 of interleaved runs)")
    ax.set_title("each device's choice, timed on every device")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
