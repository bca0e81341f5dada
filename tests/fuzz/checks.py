"""Every invariant of DESIGN.md, checked on one generated model (``check``).

For a model: the analysis completes and its groups are the architecture's symbols
(``tests.fuzz.groups_oracle``); keeping everything is the identity; for random keep-sets
(some groups emptied, one group emptied alone) the masked model at 0/1 masks, the
physically pruned model and the independently built narrow model
(``tests.fuzz.build.narrow``) agree; the pruned model's exact cost equals the
differentiable cost at those sizes; jit equals eager; optionally the pruned model exports
to ONNX with parity, low-rank factorization at full rank is the identity and 16-bit
fake-quant is close to float.

Each problem is a ``Finding``: ``unsupported`` (the library said clearly that it does not
handle this, or kept a group unprunable), ``mismatch`` (numbers or shapes differ) or
``crash`` (any other exception). ``KNOWN_UNSUPPORTED`` lists the clear errors.
"""
import dataclasses
import re
import traceback
from typing import Any, Callable, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tests.fuzz import build, groups_oracle

# (exception class name, message pattern, reason): errors that say plainly "not supported".
KNOWN_UNSUPPORTED = [
    ("PruneError", r"enter a loop or branch body", "pruning channels inside scan/cond/while"),
    ("UnsupportedPrimitiveError", r"", "export: a primitive without a runnable ONNX lowering"),
    # Only when what it wraps is a symbolic-shape limit (the model compares or converts
    # its batch size); any other wrapped error is a library bug seen through the symbolic
    # trace (a StructureMismatch of pruning.plan, a jaxpr reused from another export's
    # symbolic scope: 'incompatible shapes (B, 2), (B, 2)'), so a crash.
    ("SymbolicBatchError", r"The error: InconclusiveDimensionOperation",
     "export: the model does not trace with a symbolic batch"),
    ("HardCodedBatchError", r"", "export: a reshape hard-codes the batch size"),
    ("NotImplementedError", r"for ONNX export: its body is half precision",
     "export: loop bodies in bfloat16"),
]


@dataclasses.dataclass(frozen=True)
class KnownIssue:
    """A mismatch or crash already reported, with its xfail regression test in
    ``tests/fuzz/test_regressions.py``; the CI fuzz tests let it pass, the benchmark still
    counts it."""
    check: str                     # regex on the check's name
    pattern: str                   # regex on the finding's message
    tag: str                       # only on architectures with this feature ("": any)
    regression: str
    applies: Callable[[build.Arch, "re.Match"], bool] = lambda arch, match: True


KNOWN_ISSUES: List[KnownIssue] = [
    KnownIssue("export", r"Nodes in a graph must be topologically sorted", "",
               "test_exports_do_not_depend_on_earlier_exports"),
]

# Relative to each output's scale. Masked, pruned and narrow models sum in different orders;
# a wrong channel or count shows up as an error of order one.
TOLERANCE = {"float32": 3e-4, "bfloat16": 4e-2}
# Smallest output scale errors are measured against: a bfloat16 output of 0.01 is computed
# through values of order one, whose rounding (3 digits) it cannot be judged by.
SCALE_FLOOR = {"float32": 1e-3, "bfloat16": 0.1}
QUANT_TOLERANCE = {"float32": 2e-2, "bfloat16": 8e-2}
# A layer factorized at full rank rounds two factors and the activation between them: in
# bfloat16 one more rounding per layer than the model, which attention and a loop repeat
# (fuzz model 26 of benchmarks/results/fuzz_cond_threshold.json: 0.043 of the scale, and
# within float32's 3e-4 computed in float32; tests/fuzz/test_regressions.py).
LOWRANK_TOLERANCE = {"float32": 3e-4, "bfloat16": 8e-2}


@dataclasses.dataclass
class Finding:
    check: str
    status: str                     # unsupported | mismatch | crash
    message: str
    known: Optional[str] = None     # the regression test of a known issue

    def line(self) -> str:
        first = self.message.strip().splitlines()[0] if self.message.strip() else ""
        known = f" (known: {self.known})" if self.known else ""
        return f"[{self.status}] {self.check}: {first[:300]}{known}"


@dataclasses.dataclass
class Outcome:
    arch: build.Arch
    findings: List[Finding] = dataclasses.field(default_factory=list)
    passed: List[str] = dataclasses.field(default_factory=list)
    exported: bool = False

    @property
    def status(self) -> str:
        for s in ("crash", "mismatch", "unsupported"):
            if any(f.status == s for f in self.findings):
                return s
        return "ok"

    def failures(self, known: bool = True) -> List[Finding]:
        """Mismatches and crashes (without the known issues unless ``known``)."""
        return [f for f in self.findings if f.status in ("crash", "mismatch")
                and (known or f.known is None)]

    def report(self) -> str:
        return "\n".join([self.arch.summary()] + [f.line() for f in self.findings])


def classify(check: str, error: BaseException) -> Finding:
    name = type(error).__name__
    message = f"{name}: {error}"
    for cls, pattern, reason in KNOWN_UNSUPPORTED:
        if name == cls and re.search(pattern, str(error)):
            return Finding(check, "unsupported", f"{reason} ({message})")
    if name == "ExportParityError":
        return Finding(check, "mismatch", message)
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__)[-6:])
    return Finding(check, "crash", message + "\n" + tb)


def leaves(tree) -> List[np.ndarray]:
    return [np.asarray(jnp.asarray(x, jnp.float32)) for x in jax.tree_util.tree_leaves(tree)]


def difference(got, want, reference, tol: float, floor: float = 1e-3) -> Optional[str]:
    """None when ``got`` matches ``want`` (same tree, shapes; max error within ``tol`` of
    each output's scale in ``reference``), else what differs."""
    if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(want):
        return (f"output trees differ: {jax.tree_util.tree_structure(got)} vs "
                f"{jax.tree_util.tree_structure(want)}")
    for k, (g, w, r) in enumerate(zip(leaves(got), leaves(want), leaves(reference))):
        if g.shape != w.shape:
            return f"output {k}: shape {g.shape} vs {w.shape}"
        if not np.all(np.isfinite(g)) or not np.all(np.isfinite(w)):
            if not np.array_equal(np.isfinite(g), np.isfinite(w)):
                return f"output {k}: non-finite values differ"
        scale = max(float(np.max(np.abs(r), initial=0.0)), floor)
        err = float(np.max(np.abs(np.nan_to_num(g) - np.nan_to_num(w)), initial=0.0))
        if err > tol * scale:
            return f"output {k}: max error {err:.3g} > {tol:g} x scale {scale:.3g}"
    return None


class Checker:
    """Runs the checks of one model, recording findings instead of raising."""

    def __init__(self, arch: build.Arch):
        self.arch = arch
        self.outcome = Outcome(arch)
        self.tol = TOLERANCE[arch.dtype]

    def add(self, finding: Finding) -> None:
        if finding.status != "unsupported":
            for issue in KNOWN_ISSUES:
                match = re.search(issue.pattern, finding.message)
                if (re.fullmatch(issue.check, finding.check) and match
                        and (not issue.tag or issue.tag in self.arch.tags)
                        and issue.applies(self.arch, match)):
                    finding.known = issue.regression
        self.outcome.findings.append(finding)

    def attempt(self, check: str, fn: Callable[[], Any]):
        """``(ok, value)``; a raised error becomes a finding."""
        try:
            return True, fn()
        except Exception as error:  # noqa: BLE001 - every error is classified
            self.add(classify(check, error))
            return False, None

    def expect(self, check: str, got, want, reference, tol=None, context="") -> bool:
        diff = difference(got, want, reference, self.tol if tol is None else tol,
                          SCALE_FLOOR[self.arch.dtype])
        if diff is not None:
            self.add(Finding(check, "mismatch", f"{diff} {context}"))
            return False
        if check not in self.outcome.passed:
            self.outcome.passed.append(check)
        return True

    def note(self, check: str, status: str, message: str) -> None:
        self.add(Finding(check, status, message))


def check(arch: build.Arch, export: bool = False, lowrank: bool = True,
          quant: bool = True, eager: bool = True, keep_sets: int = 3) -> Outcome:
    """All checks of one architecture (see the module docstring)."""
    from tests.fuzz import check_steps as steps
    c = Checker(arch)
    fn = build.model(arch)
    variables = build.init_variables(arch)
    inputs = build.example_inputs(arch)
    reference = steps.run(fn, variables, *inputs)
    model = steps.Model(fn, variables, inputs, reference)
    if not steps.analysis(c, model):
        return c.outcome
    steps.identity(c, model)
    rng = np.random.default_rng(arch.seed)
    matching = model.matching
    cases = [groups_oracle.random_keep(matching, rng),
             groups_oracle.random_keep(matching, rng, remove_prob=0.3)]
    if matching.group_of_sym:
        only = sorted(matching.group_of_sym)[int(rng.integers(len(matching.group_of_sym)))]
        cases.append(groups_oracle.random_keep(matching, rng, only=only))
    if keep_sets == 2 and len(cases) == 3:      # a partial keep-set, and one that empties
        cases = [cases[0], cases[1 + arch.seed % 2]]
    elif keep_sets == 1:                         # one of the kinds, in turn over models
        cases = [cases[arch.seed % len(cases)]]
    first = None
    for i, keep in enumerate(cases[:keep_sets]):
        pruned = steps.keep_set(c, model, keep, eager=eager and i == 0)
        if first is None and pruned is not None:
            first = pruned
    if export and first is not None:
        c.outcome.exported = True          # attempted (a failure is a finding)
        steps.export(c, model, first)
    if lowrank:
        steps.lowrank(c, model)
    if quant:
        steps.quant(c, model)
    return c.outcome
