"""How often do the compression tools fail on random architectures?

Run:  python benchmarks/fuzz.py --n 2000      (hours on 2 shared cores; --n 100 in minutes)

Draws ``--n`` distinct random models with the Hypothesis strategies of ``tests/fuzz``
(convs of every kind, norms, residuals, concatenations, splits, attention, SE gates,
pooling, upsampling, scan / cond / while bodies, images, sequences, token ids, pytree
inputs and outputs, float32 and bfloat16, plain jax.numpy and Flax linen) and runs every
check of ``tests.fuzz.checks`` on each: channel groups against the architecture, identity,
masked == pruned == independently built narrow model for three keep-sets (partial, groups
emptied at random, one group emptied), cost; low-rank at full rank and 16-bit fake-quant on
alternate models, jit == eager on every 8th and ONNX export parity on every
``--export-every``-th.

A model counts once, by its worst finding: ``crashes`` (an exception that is not a clear
"not supported"), ``mismatches`` (numbers or shapes differ), ``unsupported`` (the library
said plainly it does not handle something, or kept a group unprunable), else ok. Known
issues (with xfail regression tests in tests/fuzz/test_regressions.py) are counted like
any other finding and flagged ``known``.

Writes benchmarks/results/fuzz.json (counts, failure classes with an example each, every
failure) and benchmarks/results/fuzz.md; both are rewritten every 25 models, so a long
run can be watched, and ``--resume`` continues a killed run from its last written result:
the seeded draw is deterministic, so the models already counted are drawn again (cheap) and
skipped, and the tally is read back from the JSON.
"""
import argparse
import collections
import json
import os
import pickle
import re
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from export import machine  # noqa: E402  (export sets the XLA workarounds first)
from hypothesis import HealthCheck, Phase, assume, given, seed, settings  # noqa: E402

from tests.fuzz import checks  # noqa: E402
from tests.fuzz.architectures import architectures  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")


def lscpu() -> dict:
    """Model name and core count as lscpu reports them."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {"model_name": fields.get("Model name", "").strip(),
            "cpus": fields.get("CPU(s)", "").strip()}


def failure_class(finding: checks.Finding) -> str:
    """The finding's first line with numbers, group ids and symbols blanked out."""
    first = finding.message.strip().splitlines()[0] if finding.message.strip() else ""
    first = re.sub(r"\{[^}]*\}", "{...}", first)
    first = re.sub(r"\b[sn]?\d+(\.\d+)?(e[-+]?\d+)?\b", "N", first)
    return f"{finding.status} / {finding.check}: {first[:160]}"


class Tally:
    def __init__(self):
        self.models = 0
        self.status = collections.Counter()
        self.classes = collections.Counter()
        self.examples = {}
        self.failures = []
        self.exported = 0
        self.passed = collections.Counter()
        self.tags = collections.Counter()
        self.known_only = 0          # models whose every mismatch / crash is a known issue
        self.seconds_before = 0.0    # time spent by the run this one resumes

    @classmethod
    def from_dict(cls, result: dict) -> "Tally":
        """The tally a written result holds (the inverse of ``as_dict``)."""
        tally = cls()
        tally.models, tally.exported = result["models"], result["exported"]
        tally.known_only, tally.seconds_before = result["known_only"], result["seconds"]
        tally.status.update({s: result[k] for s, k in (("mismatch", "mismatches"),
                             ("crash", "crashes"), ("unsupported", "unsupported"),
                             ("ok", "ok"))})
        tally.passed.update(result["checks_passed"])
        tally.tags.update(result["features"])
        for entry in result["classes"]:
            tally.classes[entry["class"]] = entry["findings"]
            tally.examples[entry["class"]] = entry["example"]
        tally.failures = list(result["failures"])
        return tally

    def add(self, index: int, outcome: checks.Outcome) -> None:
        self.models += 1
        self.status[outcome.status] += 1
        self.exported += outcome.exported
        self.passed.update(outcome.passed)
        self.tags.update(outcome.arch.tags)
        if outcome.failures() and not outcome.failures(known=False):
            self.known_only += 1
        for f in outcome.findings:
            key = failure_class(f)
            self.classes[key] += 1
            self.examples.setdefault(key, {"model": index, "message": f.message[:2000],
                                           "known": f.known,
                                           "architecture": outcome.arch.summary()})
            if f.status != "unsupported":
                self.failures.append({"model": index, "status": f.status, "check": f.check,
                                      "message": f.message.strip().splitlines()[0][:400],
                                      "known": f.known, "tags": list(outcome.arch.tags)})

    def as_dict(self, args, seconds: float) -> dict:
        return {
            "models": self.models, "mismatches": self.status["mismatch"],
            "crashes": self.status["crash"], "unsupported": self.status["unsupported"],
            "ok": self.status["ok"], "exported": self.exported,
            "known_only": self.known_only,
            "seconds": round(self.seconds_before + seconds, 1), "seed": args.seed,
            "export_every": args.export_every, "only": args.only,
            "checks_passed": dict(self.passed), "features": dict(self.tags),
            "classes": [{"class": k, "findings": n, "example": self.examples[k]}
                        for k, n in self.classes.most_common()],
            "failures": self.failures,
            "machine": dict(machine.describe("hypothesis", "jax2onnx"), lscpu=lscpu()),
        }


def markdown(result: dict) -> str:
    cpu = result["machine"].get("lscpu") or {}
    lines = [
        "# Fuzzing the compression tools with random architectures",
        "",
        f"`python benchmarks/fuzz.py --n {result['models']}` (seed {result['seed']}), "
        f"{result['seconds'] / 60:.0f} min on {cpu.get('model_name') or result['machine']['cpu']}"
        f" ({cpu.get('cpus') or result['machine']['cores']} CPUs), jax "
        f"{result['machine']['jax']}, hypothesis {result['machine']['hypothesis']}.",
        "",
        "| models | ok | unsupported | mismatches | crashes | only known issues | exported |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {result['models']} | {result['ok']} | {result['unsupported']} | "
        f"{result['mismatches']} | {result['crashes']} | {result['known_only']} | "
        f"{result['exported']} |",
        "",
        "A model counts once, by its worst finding (crash > mismatch > unsupported); "
        "'only known issues': mismatch or crash models whose every failure has an xfail "
        "regression test in tests/fuzz/test_regressions.py.",
        "",
        "| findings | class |",
        "| ---: | --- |",
    ]
    lines += [f"| {c['findings']} | {c['class'].replace('|', '/')} |" for c in result["classes"]]
    return "\n".join(lines) + "\n"


def write(result: dict, out: str) -> None:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown(result))


def resumed_tally(args) -> Tally:
    """A fresh tally, or with ``--resume`` the one the result at ``--out`` holds (refused
    when it was drawn with another seed or export rate: the draw would differ)."""
    if not args.resume or not os.path.exists(args.out):
        return Tally()
    with open(args.out) as f:
        result = json.load(f)
    for key in ("seed", "export_every", "only"):
        if result.get(key, getattr(args, key)) != getattr(args, key):
            raise SystemExit(f"--resume: {args.out} was written with --{key.replace('_', '-')}"
                             f" {result[key]}, not {getattr(args, key)}")
    print(f"resuming after {result['models']} models of {args.out}", flush=True)
    return Tally.from_dict(result)


def failures_dir(out: str) -> str:
    return os.path.splitext(out)[0] + "_failures"


def save_failing(arch, index: int, out: str) -> None:
    """Pickles a failing model's architecture with the checks it ran, so ``--replay`` can
    check it again after a fix (a long run's draw depends on more than its seed)."""
    os.makedirs(failures_dir(out), exist_ok=True)
    with open(os.path.join(failures_dir(out), f"model{index}.pkl"), "wb") as f:
        pickle.dump({"arch": arch, "index": index}, f)


def replay(paths) -> dict:
    """``{path: status}`` of the saved failing models, checked again with every check."""
    statuses = {}
    for path in paths:
        with open(path, "rb") as f:
            saved = pickle.load(f)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = checks.check(saved["arch"], export=True, lowrank=True, quant=True,
                                   eager=True)
        statuses[path] = outcome.status
        print(f"{path} (model {saved['index']}): {outcome.status} "
              + "; ".join(f.line()[:200] for f in outcome.failures()), flush=True)
    return statuses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000,
                        help="distinct models to draw (all are checked unless --only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export-every", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(RESULTS, "fuzz.json"))
    parser.add_argument("--only", default="",
                        help="comma-separated tags (e.g. cond,dtype:bfloat16): check only the "
                             "drawn models that have all of them, e.g. to recheck a failure "
                             "class after a fix with --export-every 1")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run whose last written result is --out")
    parser.add_argument("--replay", nargs="+", metavar="PICKLE",
                        help="re-run the checks on failing models saved by an earlier run "
                             "(the draw of a long run cannot be replayed from its seed)")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    tally, seen, start = resumed_tally(args), set(), time.time()
    skip, only = tally.models, set(filter(None, args.only.split(",")))

    @seed(args.seed)
    @settings(max_examples=args.n, database=None, deadline=None, phases=(Phase.generate,),
              suppress_health_check=list(HealthCheck))
    @given(architectures())
    def one(arch):
        nonlocal skip
        summary = arch.summary()
        assume(summary not in seen)
        seen.add(summary)
        if not only <= set(arch.tags):
            return
        if skip:                     # counted by the run this one resumes
            skip -= 1
            return
        i = tally.models
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = checks.check(arch, export=i % args.export_every == 0,
                                   lowrank=i % 2 == 0, quant=i % 2 == 1, eager=i % 8 == 0)
        tally.add(i, outcome)
        if outcome.failures():
            save_failing(arch, i, args.out)
        print(f"{i} {outcome.status} {time.time() - start:.0f}s "
              + "; ".join(f.line()[:140] for f in outcome.failures()), flush=True)
        if tally.models % 25 == 0:
            write(tally.as_dict(args, time.time() - start), args.out)

    one()
    result = tally.as_dict(args, time.time() - start)
    write(result, args.out)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
