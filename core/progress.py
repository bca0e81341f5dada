"""What a long run shows and keeps: a progress bar (step, ETA, metrics) and JSON lines.

metrics.jsonl holds one JSON object per logged step. After a resume, lines from steps
beyond the restored checkpoint are dropped so the file reads as one uninterrupted run.
"""
import json
import os
import sys
import time

from tqdm import tqdm


class MetricsLog:
    def __init__(self, path: str, resume_step: int = 0):
        self.path = path
        if os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if line.strip()
                        and json.loads(line).get("step", 0) <= resume_step]
            with open(path, "w") as f:
                f.writelines(kept)

    def write(self, step: int, **metrics):
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: (float(v) if hasattr(v, "__float__") else v)
                       for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def progress_bar(total: int, initial: int = 0, description: str = "train", enabled=True):
    """A tqdm bar with ETA; disabled (but still counting) when output is not wanted."""
    return tqdm(total=total, initial=initial, desc=description, unit="step",
                dynamic_ncols=True, file=sys.stderr, disable=not enabled,
                mininterval=1.0, smoothing=0.05)
