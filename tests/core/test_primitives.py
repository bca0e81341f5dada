"""core.primitives: every category holds real primitives, the ones JAX binds when tracing, and
the tools that dispatch on them (latency model, fake-quant, dataflow, block graph) see
``copy`` and ``remat2`` (the names that string lists got wrong: ``"copy_p"``, ``"remat"``).

The last tests read the project's source: no string list of primitive names, and no
comparison of ``eqn.primitive.name`` with one, anywhere outside core/primitives.py.
"""
import ast
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend.core import Primitive

from core import primitives as P
from core import trace as trace_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Attribute name -> primitive name where JAX's object is not called ``<name>_p``.
RENAMED = {"remat_p": "remat2", "add_jaxvals_p": "add_any", "scatter_add_p": "scatter-add",
           "scatter_sub_p": "scatter-sub", "scatter_mul_p": "scatter-mul",
           "scatter_min_p": "scatter-min", "scatter_max_p": "scatter-max"}


def primitives_of(fn, *args):
    """Every primitive bound by ``fn(*args)``, nested calls and bodies included."""
    closed = jax.make_jaxpr(fn)(*args)
    return {eqn.primitive for _, eqn in trace_lib.iter_eqns(closed.jaxpr)}


# ------------------------------------------------------------------ the module itself
def test_categories_hold_primitives_named_as_jax_names_them():
    assert len(P.CATEGORIES) >= 15
    for name, category in P.CATEGORIES.items():
        assert category, name
        for prim in category:
            assert isinstance(prim, Primitive), (name, prim)
            assert P.by_name(prim.name) is prim, (name, prim.name)
    attributes = {a: v for a, v in vars(P).items() if a.endswith("_p")}
    assert len(attributes) >= 130
    for attr, prim in attributes.items():
        assert isinstance(prim, Primitive), attr
        assert prim.name == RENAMED.get(attr, attr[:-2]), (attr, prim.name)
        assert prim in P.ALL


def test_derived_categories_are_unions_and_differences():
    assert P.ELEMENTWISE == P.ELEMENTWISE_UNARY | P.ELEMENTWISE_NARY
    assert not P.ELEMENTWISE_UNARY & P.ELEMENTWISE_NARY
    assert P.ARITHMETIC == P.ELEMENTWISE - P.NOT_ARITHMETIC
    assert P.copy_p in P.NOT_ARITHMETIC and P.copy_p not in P.ARITHMETIC
    assert P.LINEAR == {lax.conv_general_dilated_p, lax.dot_general_p}
    assert P.CALLS == set(P.CALL_JAXPR_PARAM) and P.CUSTOM_DERIVATIVE_CALLS <= P.CALLS
    assert P.POOLING < P.WINDOW_REDUCTIONS and P.RESHAPES < P.LAYOUT


def test_by_name_names_close_matches_for_stale_names():
    assert P.by_name("copy") is lax.copy_p
    assert P.by_name("remat2") is P.remat_p
    with pytest.raises(KeyError, match="'copy_p'.*did you mean copy"):
        P.by_name("copy_p")
    with pytest.raises(KeyError, match="'remat'.*remat2"):
        P.by_name("remat")


def test_private_lookup_fails_clearly_on_a_missing_primitive():
    assert P._private("pvary", "jax._src.core") is P.pvary_p
    with pytest.raises(ImportError, match=rf"JAX {jax.__version__} has no primitive 'nope'"):
        P._private("nope", "jax._src.core")
    with pytest.raises(ImportError, match="has no primitive 'pvary' at jax._src.pjit"):
        P._private("pvary", "jax._src.pjit")         # an attribute of another name


def test_rule_table_expands_categories_and_refuses_two_rules():
    table = P.rule_table({P.LINEAR: "linear", P.add_p: "add"})
    assert table == {lax.conv_general_dilated_p: "linear", lax.dot_general_p: "linear",
                     lax.add_p: "add"}
    with pytest.raises(ValueError, match="'dot_general' has two rules"):
        P.rule_table({P.LINEAR: "linear", P.dot_general_p: "dot"})
    with pytest.raises(TypeError, match="not 'add'"):
        P.rule_table({("add",): "add"})
    with pytest.raises(TypeError, match="not 'reshape'"):
        P.rule_table({"reshape": "by name"})
    assert P.names(P.LINEAR) == ["conv_general_dilated", "dot_general"]


def test_channel_rules_are_keyed_by_primitive_and_refuse_a_second_rule():
    from core import interpreter, rules_compute, rules_layout
    assert interpreter.RULES and all(isinstance(p, Primitive) for p in interpreter.RULES)
    assert interpreter.rule_for(P.copy_p) is rules_compute.unary
    assert interpreter.rule_for(P.remat_p) is rules_compute.call
    assert interpreter.rule_for(P.scatter_add_p) is rules_layout.scatter
    before = dict(interpreter.RULES)
    with pytest.raises(ValueError, match="'reshape' registered twice"):
        interpreter.register(P.fft_p, P.reshape_p)(lambda interp, eqn, ins: ins)
    with pytest.raises(TypeError, match="not 'reshape'"):
        interpreter.register("reshape")(lambda interp, eqn, ins: ins)
    assert interpreter.RULES == before and P.fft_p not in before   # nothing half-registered


# ------------------------------------------------------------ what JAX binds, by identity
def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def _with_vjp(x):
    return jnp.sin(x)


_with_vjp.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))

X = jnp.ones((2, 4, 4, 3))
TRACED = [  # (category, function, args): the function binds primitives of the category
    ("COPY", jnp.copy, (X,)),
    ("CALLS", jax.checkpoint(jnp.sin), (X,)),
    ("CALLS", jax.nn.relu, (X,)),
    ("CALLS", jax.jit(jnp.cos), (X,)),
    ("CUSTOM_DERIVATIVE_CALLS", _with_vjp, (X,)),
    ("LINEAR", _conv, (X, jnp.ones((3, 3, 3, 5)))),
    ("LINEAR", lambda x, w: x @ w, (X, jnp.ones((3, 2)))),
    ("POOLING", lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1),
                                            (1, 2, 2, 1), "VALID"), (X,)),
    ("REDUCTIONS", lambda x: (x.sum(-1), x.max(0), jnp.argmax(x, -1)), (X,)),
    ("RESHAPES", lambda x: (x.reshape(2, -1), x[None], jnp.squeeze(x[:1], 0)), (X,)),
    ("LAYOUT", lambda x: x.transpose(0, 3, 1, 2), (X,)),
    ("CASTS", lambda x: x.astype(jnp.bfloat16), (X,)),
    ("ANNOTATIONS", lax.stop_gradient, (X,)),
    ("MATH_UNARY", lambda x: (jnp.exp(x), jnp.tanh(x), lax.rsqrt(x), x ** 3, jax.nn.sigmoid(x),
                              jnp.abs(x), jnp.square(x)), (X,)),
    ("ELEMENTWISE_NARY", lambda x: (x + 1, x * x, x - x, x / 2, jnp.maximum(x, 0),
                                    jnp.where(x > 0, x, 0.0), jnp.clip(x, 0, 6)), (X,)),
    ("SLICING", lambda x: (x[:, 1:3], jnp.concatenate([x, x], -1), jnp.pad(x, 1)), (X,)),
    ("CONTROL_FLOW", lambda x: lax.cond(x.sum() > 0, jnp.sin, jnp.cos, x), (X,)),
    ("CONTROL_FLOW", lambda x: lax.scan(lambda c, r: (c + r, c), x[0], x)[0], (X,)),
    ("CONTROL_FLOW", lambda x: lax.while_loop(lambda c: c.sum() < 9, lambda c: c + 1, x), (X,)),
    ("CUMULATIVE", lambda x: jnp.cumsum(x, -1), (X,)),
]


@pytest.mark.parametrize("category,fn,args", TRACED,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(TRACED)])
def test_traced_primitives_are_the_objects_in_the_categories(category, fn, args):
    bound = primitives_of(fn, *args)
    assert bound & P.CATEGORIES[category], (category, sorted(p.name for p in bound))


def test_every_traced_primitive_is_known():
    bound = set()
    for _, fn, args in TRACED:
        bound |= primitives_of(fn, *args)
    assert bound <= P.ALL, sorted(p.name for p in bound - P.ALL)


# ------------------------------------------- regressions: copy (not "copy_p") and remat2
def _conv_block(v, x):
    y = jnp.maximum(_conv(x, v["w"]) * v["scale"] + v["bias"], 0.0)
    return lax.reduce_window(y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _block_variables():
    key = jax.random.PRNGKey(0)
    return {"w": jax.random.normal(key, (3, 3, 3, 8)) * 0.3, "scale": jnp.linspace(0.5, 2, 8),
            "bias": jnp.linspace(-0.1, 0.1, 8)}


def _sig(ops):
    return [(op.sig, op.primitive) for op in ops]


def test_latency_model_treats_copy_as_free_and_enters_remat2():
    from export import latency_model as lm
    v, x = _block_variables(), jnp.ones((1, 8, 8, 3))
    plain = lm.extract_ops(_conv_block, v, x)
    assert [op.sig.kind for op in plain] == ["conv", "pool"]
    copied = lm.extract_ops(lambda v, x: jnp.copy(_conv_block(v, jnp.copy(x))), v, x)
    assert _sig(copied) == _sig(plain)                   # copies cost nothing
    remat = lm.extract_ops(jax.checkpoint(_conv_block), v, x)
    assert _sig(remat) == _sig(plain)                    # the checkpointed body is walked
    assert P.remat_p in lm.CALLS and P.copy_p in lm.FREE
    assert remat[0].primitive is lax.conv_general_dilated_p
    assert lm.POOL_MODE.get(remat[1].primitive) == "max" and remat[1].sig.get("mode") == "max"


def test_call_jaxpr_enters_remat2_and_finds_no_body_elsewhere():
    closed = jax.make_jaxpr(jax.checkpoint(jnp.sin))(jnp.ones(3))
    (eqn,) = closed.jaxpr.eqns
    assert eqn.primitive is P.remat_p and eqn.primitive.name == "remat2"
    body = trace_lib.call_jaxpr(eqn)
    assert [e.primitive for e in body.jaxpr.eqns] == [lax.sin_p]
    assert trace_lib.call_jaxpr(jax.make_jaxpr(jnp.sin)(jnp.ones(3)).jaxpr.eqns[0]) is None


def test_quant_sees_a_kernel_through_copy_and_folds_through_remat2():
    from quant import dataflow, fakequant
    from quant.batchnorm_folding import fold_batchnorm
    v, x = _block_variables(), jnp.ones((1, 8, 8, 3))
    copied = lambda v, x: _conv_block({**v, "w": jnp.copy(v["w"])}, jnp.copy(x))
    flat = dataflow.flatten(copied, v, x)
    (conv,) = [e for e in flat.eqns if e.primitive is lax.conv_general_dilated_p]
    assert flat.root_param(conv.invars[1]) == "w"            # through the copy
    domain = fakequant.layer_domain(flat)
    assert domain[flat.eqns[-1].outvars[0]]                   # pooled output still int8
    model = fakequant.quantize(copied, v, x)
    assert "w" in model.sites and model.sites["w"].kind == "weight"
    for fn in (copied, jax.checkpoint(_conv_block)):
        folded_fn, folded_vars, folded = fold_batchnorm(fn, v, x)
        assert len(folded) == 1 and len(folded[0].chain) == 2     # mul, add folded
        np.testing.assert_allclose(folded_fn(folded_vars, x), _conv_block(v, x),
                                   rtol=1e-5, atol=1e-5)


def test_block_graph_is_the_same_through_remat2_and_copy():
    from nas import block_graph
    v, x = _block_variables(), jnp.ones((1, 8, 8, 3))
    plain = block_graph.node_kinds(block_graph.block_graph(_conv_block, v, x))
    assert plain == ["input", "conv", "mul", "add", "max", "pool"]
    remat = block_graph.node_kinds(block_graph.block_graph(jax.checkpoint(_conv_block), v, x))
    assert remat == plain


# ----------------------------------------------------- no string lists of primitive names
SCANNED = ("core", "pruning", "quant", "lowrank", "nas", "export", "models", "data", "experiments",
           "benchmarks")
# Names that string lists used but no primitive of this JAX has (kept so they are caught).
STALE = {"copy_p", "remat", "pjit", "core_call", "checkpoint", "custom_vjp_call_jaxpr",
         "expand_dims", "mesh_cast", "custom_jvp_call_jaxpr_stub", "reduce_window_and",
         "reduce_window_or", "random_gamma_grad", "scatter_add", "scatter_mul", "scatter_min",
         "scatter_max", "scatter_sub"}
PRIMITIVE_NAMES = {p.name for p in P.ALL} | STALE


def _strings(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        found = [s for e in node.elts for s in _strings(e)]
        return found if len(found) == len(node.elts) else []
    return []


def _is_primitive_name(node) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "name"
            and isinstance(node.value, ast.Attribute) and node.value.attr == "primitive")


def _primitive_name_variables(tree):
    """Local names assigned ``x.primitive.name`` (``name = eqn.primitive.name``)."""
    return {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and _is_primitive_name(node.value) for t in node.targets if isinstance(t, ast.Name)}


def _compared_names(node, variables):
    if not (_is_primitive_name(node.left) or isinstance(node.left, ast.Name)
            and node.left.id in variables):
        return []
    return [s for other in node.comparators for s in _strings(other) if s in PRIMITIVE_NAMES]


def _registered_names(node):
    func = node.func
    called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    if called not in ("register", "register_category"):
        return []
    return [s for arg in node.args for s in _strings(arg) if s in PRIMITIVE_NAMES]


def string_dispatch(source: str):
    """(line, what) for each comparison of ``x.primitive.name`` (or a variable holding it)
    with a primitive name, each ``register("name")``, each collection of two or more strings
    that are all primitive names, and each dict whose literal keys are all primitive names."""
    tree = ast.parse(source)
    variables = _primitive_name_variables(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and _compared_names(node, variables):
            found.append((node.lineno, f"compared with {_compared_names(node, variables)}"))
        elif isinstance(node, ast.Call) and _registered_names(node):
            found.append((node.lineno, f"registered by name {_registered_names(node)}"))
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            names = _strings(node)
            if len(names) >= 2 and set(names) <= PRIMITIVE_NAMES:
                found.append((node.lineno, f"string list {names[:4]}..."))
        elif isinstance(node, ast.Dict):
            keys = [k for k in node.keys if k is not None]      # None: a ** unpacking
            names = [s for k in keys for s in _strings(k)]
            if keys and len(names) == len(keys) and set(names) <= PRIMITIVE_NAMES:
                found.append((node.lineno, f"dict keyed by names {names[:4]}..."))
    return sorted(found)


def _project_files():
    for folder in SCANNED:
        for path in sorted(glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)):
            rel = os.path.relpath(path, ROOT)
            if rel != os.path.join("core", "primitives.py"):
                yield rel


def test_the_scan_finds_what_it_should():
    bad = ('X = ("conv_general_dilated", "dot_general")\nif e.primitive.name == "copy_p": pass\n'
           'R = {"remat": 1, **OTHER}\nname = e.primitive.name\nif name != "scan": pass\n'
           '@register("reshape")\ndef f(): pass\n')
    assert [line for line, _ in string_dispatch(bad)] == [1, 2, 3, 5, 6]
    fine = ('K = ("input", "conv")\nM = {"max": "MaxPool", "avg": "AveragePool"}\n'
            'if e.primitive is P.add_p: pass\nname = e.primitive.name\nif mode == "max": pass\n'
            'print(name, {"path": 1})\n')
    assert string_dispatch(fine) == []


def test_no_string_lists_of_primitive_names_outside_core_primitives():
    offenders = {}
    for rel in _project_files():
        with open(os.path.join(ROOT, rel)) as f:
            found = string_dispatch(f.read())
        if found:
            offenders[rel] = found
    assert not offenders, ("dispatch on core.primitives categories (eqn.primitive in "
                           f"P.LINEAR), not on names: {offenders}")


def test_profile_op_lists_name_real_primitives():
    unknown = {}
    for path in glob.glob(os.path.join(ROOT, "quant", "profiles", "*.json")):
        with open(path) as f:
            data = json.load(f)
        for key in ("quantize_inputs_of", "supported", "supported_if_constant_operand"):
            values = data.get(key) or []
            for name in ([] if isinstance(values, str) else values):
                if name not in {p.name for p in P.ALL}:
                    unknown.setdefault(os.path.basename(path), []).append(name)
    assert not unknown, unknown
