"""What turning off XLA:CPU's YNNPACK fusion costs or gains: ResNet-20 teacher training speed
and the jit-vs-eager error of the miscompiled pattern, fusion on (XLA's default) against
off (the project's workaround, core/xla_workarounds.py), in interleaved rounds.

Run:  python benchmarks/xla_ynn_fusion.py [--steps 40 --rounds 3]
Writes benchmarks/results/xla_ynn_fusion.{json,md}. About 5 minutes on 2 CPU cores.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETTINGS = {"fusion on (XLA default)": "0", "fusion off (project default)": "1"}


def child(steps: int) -> dict:
    """Times ResNet-20 train steps at batch 128 on real Fashion-MNIST in this process."""
    import jax
    import numpy as np
    import optax

    from core import train as train_lib
    from experiments.preamble import build_module
    from data import fashion_mnist
    sys.path.insert(0, os.path.join(ROOT, "tests", "core"))
    from test_xla_workarounds import _weights, miscompiled_pattern

    images, labels = fashion_mnist.load_split("train")
    images = (np.asarray(images[:128 * 8], np.float32)[..., None] / 255.0 - 0.286) / 0.353
    labels = np.asarray(labels[:128 * 8], np.int32)
    module = build_module("resnet20")
    variables = module.init(jax.random.key(0), images[:1], train=False)
    model = train_lib.linen_model(module, variables)
    tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
    trained = {"params": variables["params"]}
    state = train_lib.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), trained=trained,
                                 collections={k: v for k, v in variables.items() if k != "params"},
                                 opt_state=tx.init(trained), ema=trained)
    step = jax.jit(train_lib.make_train_step(model, tx, train_lib.default_loss(), 0.0, 0))
    batch = lambda i: (images[128 * (i % 8):128 * (i % 8 + 1)], labels[128 * (i % 8):128 * (i % 8 + 1)])  # noqa: E731,E501
    for i in range(3):
        state, _ = step(state, *batch(i))
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = step(state, *batch(i))
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start
    p = _weights()
    x = np.random.default_rng(1).uniform(0, 1, (1, 128, 128, 3)).astype(np.float32)
    error = float(np.abs(jax.jit(miscompiled_pattern)(p, x) - miscompiled_pattern(p, x)).max())
    return {"steps_per_second": steps / elapsed, "jit_vs_eager_error": error,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps)))
        return
    from export import machine
    runs = {name: [] for name in SETTINGS}
    for round_index in range(args.rounds):
        for name, workaround in SETTINGS.items():
            env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
            env["COMPRESS_XLA_WORKAROUNDS"] = workaround
            out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)],
                                 env=env, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {round_index + 1}/{args.rounds} {name}: "
                  f"{runs[name][-1]['steps_per_second']:.2f} step/s, "
                  f"jit vs eager error {runs[name][-1]['jit_vs_eager_error']:.3g}", flush=True)
    rows = {name: {"median_steps_per_second": statistics.median(r["steps_per_second"] for r in rs),
                   "max_jit_vs_eager_error": max(r["jit_vs_eager_error"] for r in rs),
                   "runs": rs} for name, rs in runs.items()}
    on, off = (rows[name]["median_steps_per_second"] for name in SETTINGS)
    result = {"machine": machine.describe("jaxlib"), "steps": args.steps, "rounds": args.rounds,
              "rows": rows, "speed_ratio_off_over_on": off / on}
    out_dir = os.path.join(ROOT, "benchmarks", "results")
    with open(os.path.join(out_dir, "xla_ynn_fusion.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"# XLA:CPU YNNPACK fusion on vs off ({result['machine']['cpu']}, "
             f"{result['machine']['cores']} cores, jaxlib {result['machine']['jaxlib']})", "",
             "ResNet-20 training at batch 128 on Fashion-MNIST; median of "
             f"{args.rounds} interleaved rounds of {args.steps} steps.", "",
             "| setting | step/s (median) | jit vs eager error of the repro |", "|---|---|---|"]
    lines += [f"| {name} | {row['median_steps_per_second']:.2f} | "
              f"{row['max_jit_vs_eager_error']:.3g} |" for name, row in rows.items()]
    lines += ["", f"Speed ratio off / on: {off / on:.2f}x"]
    with open(os.path.join(out_dir, "xla_ynn_fusion.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
