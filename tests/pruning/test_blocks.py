"""Block finding and removal (issue #8): removal equals forcing the block's output to zero,
its equations and parameters are really gone, shape-changing blocks are never offered, and
the block family (tiny configs, end to end) is ordered and exports with parity."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from core import rewrite
from models import zoo
from pruning import blocks as blocks_lib


@functools.lru_cache(maxsize=None)
def _model(name, module_paths=()):
    fn, variables, x = zoo.instantiate(name)
    return fn, variables, x, blocks_lib.find_blocks(fn, variables, x,
                                                    module_paths=module_paths)


def _forced_to_zero(analysis, variables, x, blocks):
    """The flat jaxpr evaluated by ``core.rewrite`` with each block's removed operand
    multiplied by zero (an add keeps ``a + 0``; a concatenation gets a zero slot)."""
    anchors = {}
    for b in blocks:
        edit = b.edit
        if isinstance(edit, blocks_lib.Zero):
            anchors.setdefault(edit.eqn, set()).add(edit.operand)
        else:
            eqn = analysis.jaxpr.eqns[edit.eqn]
            kept = blocks_lib._var_at(analysis.jaxpr, edit.source)
            anchors.setdefault(edit.eqn, set()).update(
                p for p, v in enumerate(eqn.invars) if v is not kept)

    def hook(eqn, invals, path):
        if len(path) != 1 or path[0] not in anchors:
            return None
        zeroed = [v * 0 if p in anchors[path[0]] else v for p, v in enumerate(invals)]
        return rewrite.bind_equation(eqn, zeroed)
    leaves = jax.tree_util.tree_leaves((variables, x))
    return rewrite.evaluate(analysis.closed, leaves, hook)[0]


def test_flatten_is_the_original_function():
    fn, variables, x, analysis = _model("resnet20")
    leaves = jax.tree_util.tree_leaves((variables, x))
    flat = rewrite.evaluate(analysis.closed, leaves)[0]
    np.testing.assert_allclose(flat, fn(variables, x), rtol=1e-6, atol=1e-6)
    assert not any(e.primitive.name in ("custom_jvp_call", "jit", "pjit")
                   for e in analysis.jaxpr.eqns)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vit", "mixer", "inception",
                                  "densenet"])
def test_removal_equals_block_output_forced_to_zero(name):
    fn, variables, x, analysis = _model(name)
    assert analysis.blocks, f"{name}: no block found"
    for block in analysis.blocks:
        removed = blocks_lib.remove_blocks(fn, variables, x, blocks=[block], analysis=analysis)
        got = removed.fn(removed.variables, x)
        want = _forced_to_zero(analysis, variables, x, [block])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                                   err_msg=f"{name} block {block.label}")
        assert not np.allclose(got, fn(variables, x), atol=1e-4), \
            f"{name}: removing {block.label} changed nothing"


def test_removing_several_blocks_at_once():
    fn, variables, x, analysis = _model("vit")
    chosen = [b for b in analysis.blocks if b.kind == "residual"][::2]
    assert len(chosen) >= 2
    removed = blocks_lib.remove_blocks(fn, variables, x, blocks=chosen, analysis=analysis)
    np.testing.assert_allclose(removed.fn(removed.variables, x),
                               _forced_to_zero(analysis, variables, x, chosen),
                               rtol=1e-5, atol=1e-5)


def test_kinds_found_on_resnet_vit_inception():
    kinds = {name: {b.kind for b in _model(name)[3].blocks}
             for name in ("resnet20", "vit", "inception")}
    assert "residual" in kinds["resnet20"] and "add_branch" in kinds["resnet20"]
    assert kinds["vit"] == {"residual"}
    assert kinds["inception"] == {"concat_branch"}
    vit_labels = [b.label for b in _model("vit")[3].blocks]
    assert vit_labels == ["block0/{norm1,attn}", "block0/{norm2,mlp_fc1,mlp_fc2}",
                          "block1/{norm1,attn}", "block1/{norm2,mlp_fc1,mlp_fc2}"]


def test_removed_equations_and_parameters_are_gone():
    fn, variables, x, analysis = _model("resnet20")
    (block,) = [b for b in analysis.blocks if b.kind == "residual"]
    assert block.module_path == "stage0_block0"
    assert any("models/resnet.py" in line for line in block.source_lines)
    removed = blocks_lib.remove_blocks(fn, variables, x, blocks=[block], analysis=analysis)
    original = jax.make_jaxpr(fn)(variables, x).jaxpr
    rewritten = jax.make_jaxpr(removed.fn)(removed.variables, x).jaxpr

    def convs(jaxpr):
        return sum(e.primitive.name == "conv_general_dilated" for e in jaxpr.eqns)
    assert convs(rewritten) == convs(original) - 2
    names = {str(e.source_info.name_stack) for e in rewritten.eqns}
    assert not any("stage0_block0/conv" in n or "stage0_block0/bn" in n for n in names)
    deleted = [analysis.jaxpr.eqns[i] for i in block.equations]
    assert sum(e.primitive.name == "conv_general_dilated" for e in deleted) == 2
    assert len(rewritten.eqns) <= len(analysis.jaxpr.eqns) - len(block.equations)
    assert "params/stage0_block0/conv1/kernel" in removed.removed_params
    assert "stage0_block0" not in removed.variables["params"]
    assert "stem" in removed.variables["params"]


def test_costs_count_the_removed_convs():
    fn, variables, x, analysis = _model("resnet20")
    costed = blocks_lib.with_costs(fn, variables, x, analysis)
    (block,) = [b for b in costed.blocks if b.kind == "residual"]
    # Two 3x3 convs, 4 -> 4 channels at 12x12, batch 1: 2 * 2 * 144 * 9 * 4 * 4 MAC-FLOPs.
    matmul = 2 * (2 * 12 * 12 * 9 * 4 * 4)
    assert matmul < block.flops < matmul * 1.2
    assert block.params == 2 * 9 * 4 * 4 + 2 * 2 * 4     # kernels + bn scale/bias


def test_shape_changing_blocks_are_never_offered():
    fn, variables, x, analysis = _model("resnet20", ("stage0_block0", "stage1_block0"))
    modules = [b for b in analysis.blocks if b.kind == "module"]
    assert [b.module_path for b in modules] == ["stage0_block0"]
    assert any("stage1_block0" in what and "change a shape" in why
               for what, why in analysis.rejected)
    # A ViT's patch embedding is a concatenation piece, but removing it would disconnect
    # the image from the output.
    vit = _model("vit")[3]
    assert all(b.kind != "concat_branch" for b in vit.blocks)
    assert any("disconnect" in why for _, why in vit.rejected)


def test_broadcasting_add_is_not_offered():
    """``pool(h) @ w + conv(h)``: dropping the conv leaves a (B,1,1,C) value where the sum is
    (B,H,W,C), so that branch is never offered; the other branch is."""
    def fn(params, x):
        h = jnp.tanh(lax.conv_general_dilated(x, params["k1"], (1, 1), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC")))
        pooled = jnp.mean(h, axis=(1, 2), keepdims=True) @ params["w"]
        branch = lax.conv_general_dilated(h, params["k2"], (1, 1), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(pooled + branch, axis=(1, 2))
    keys = jax.random.split(jax.random.key(0), 4)
    params = {"k1": jax.random.normal(keys[0], (3, 3, 2, 4)),
              "k2": jax.random.normal(keys[1], (3, 3, 4, 4)),
              "w": jax.random.normal(keys[2], (4, 4))}
    x = jax.random.normal(keys[3], (2, 6, 6, 2))
    analysis = blocks_lib.find_blocks(fn, params, x)
    assert len(analysis.blocks) == 1
    (block,) = analysis.blocks
    assert block.kind == "add_branch"
    assert [e.primitive.name for e in map(analysis.jaxpr.eqns.__getitem__, block.equations)
            if e.primitive.name == "dot_general"] == ["dot_general"]
    assert any("(2, 1, 1, 4)" in why for _, why in analysis.rejected)
    removed = blocks_lib.remove_blocks(fn, params, x, blocks=[block], analysis=analysis)
    np.testing.assert_allclose(removed.fn(removed.variables, x),
                               _forced_to_zero(analysis, params, x, [block]), rtol=1e-5)
    assert "w" not in removed.variables


def test_plain_residual_removal_is_the_skip_path():
    def fn(params, x):
        return jax.nn.relu(x + jnp.tanh(x @ params["w1"]) @ params["w2"]) @ params["head"]
    keys = jax.random.split(jax.random.key(1), 4)
    params = {"w1": jax.random.normal(keys[0], (8, 16)), "w2": jax.random.normal(keys[1], (16, 8)),
              "head": jax.random.normal(keys[2], (8, 3))}
    x = jax.random.normal(keys[3], (5, 8))
    analysis = blocks_lib.find_blocks(fn, params, x)
    (block,) = analysis.blocks
    assert block.kind == "residual"
    removed = blocks_lib.remove_blocks(fn, params, x, blocks=[block], analysis=analysis)
    np.testing.assert_allclose(removed.fn(removed.variables, x),
                               jax.nn.relu(x) @ params["head"], rtol=1e-6)
    assert sorted(removed.removed_params) == ["w1", "w2"]
    # Another batch size and jit work (the model is re-flattened at those shapes).
    x7 = jax.random.normal(keys[3], (7, 8))
    np.testing.assert_allclose(jax.jit(removed.fn)(removed.variables, x7),
                               jax.nn.relu(x7) @ params["head"], rtol=1e-6)


def test_available_blocks_shrink_as_blocks_go():
    fn, variables, x, analysis = _model("vit")
    first = analysis.blocks[0]
    rest = analysis.available([first])
    assert first not in rest and len(rest) == len(analysis.blocks) - 1


# --------------------------------------------------------------------------- the family
def test_trade_off_weight_moves_from_quality_to_latency():
    from pruning.block_family import BlockScore, trade_off
    base_q, base_ms = {"kd_loss": 0.0, "accuracy": 0.9}, 10.0

    def scores():    # block 0: harmless and slow to remove; block 1: harmful, saves a lot
        return [BlockScore(0, "a", 0.89, 0.01, 9.5), BlockScore(1, "b", 0.70, 0.30, 6.0)]
    best = lambda s: min(s, key=lambda x: x.score).block           # noqa: E731
    assert best(trade_off(scores(), 0.0, base_q, base_ms)) == 0
    assert best(trade_off(scores(), 1.0, base_q, base_ms)) == 1
    assert best(trade_off(scores(), 0.0, base_q, base_ms, quality="accuracy")) == 0
    ranked = trade_off(scores(), 0.5, base_q, base_ms)
    assert ranked[1].latency_saved_ms == pytest.approx(4.0)
    assert ranked[1].quality_cost == pytest.approx(0.30)
    with pytest.raises(ValueError):
        trade_off(scores(), 1.5, base_q, base_ms)


@pytest.mark.parametrize("rescore", [False, True])
def test_family_is_ordered_by_block_count(rescore):
    """Greedy family on a tiny ViT with real quality scoring and FLOPs standing in for the
    device: member k removes k blocks, each member's removals extend the previous one's."""
    from core import cost
    from pruning.block_family import FamilySettings, QualityProbe, build_family
    fn, variables, x, analysis = _model("vit")
    images = jax.random.normal(jax.random.key(3), (16,) + x.shape[1:])
    probe = QualityProbe(np.asarray(images), np.zeros(16, np.int32),
                         np.asarray(fn(variables, images)), 4.0, batch_size=8)
    flops = lambda models, x1: [float(cost.count(f, v, x1[:1]).flops)   # noqa: E731
                                for _, f, v in models]
    settings = FamilySettings(members=3, weight=0.5, rescore=rescore)
    family = build_family(fn, variables, x[:1], analysis, settings, probe, flops,
                          log=lambda *a: None)
    assert [len(removed) for removed, _ in family] == [0, 1, 2, 3]
    for (smaller, _), (larger, _) in zip(family[1:], family[:-1]):
        assert [b.id for b in smaller[:-1]] == [b.id for b in larger]
    costs = [cost.count(*(lambda r: (r.fn, r.variables))(blocks_lib.remove_blocks(
        fn, variables, x[:1], blocks=removed, analysis=analysis)), x[:1]).flops
        for removed, _ in family]
    assert all(a > b for a, b in zip(costs, costs[1:]))


def test_latency_probe_times_all_candidates_side_by_side(tmp_path):
    """Every candidate is timed in every round (so load drift hits all alike) and each gets
    the median of its own pooled samples, in the order given."""
    from export import runners
    from pruning.block_family import LatencyProbe
    fn, variables, x, analysis = _model("vit")
    trials = [("full", fn, variables)] + [
        (f"block{b.id}", *(lambda r: (r.fn, r.variables))(blocks_lib.remove_blocks(
            fn, variables, x[:1], blocks=[b], analysis=analysis)))
        for b in analysis.blocks[:2]]

    class NodeCountRunner(runners.Runner):      # a deterministic stand-in for wall time
        name, calls = "fake", []

        def measure(self, model, batch=1, inputs=None, runs=None, warmup=None):
            self.calls.append(model)
            nodes = len(runners._as_model(model).graph.node)
            return runners.summarize(self.name, [nodes + 0.1 * i for i in range(runs)])

    probe = LatencyProbe("ort-cpu-1t", "measured", 1, runs=20, directory=str(tmp_path),
                         rounds=4)
    probe.runner = NodeCountRunner()
    ms = probe(trials, x[:1])
    assert len(probe.runner.calls) == 4 * len(trials)
    assert probe.runner.calls[:3] == probe.runner.calls[3:6]       # round-robin order
    import onnx
    nodes = [len(onnx.load(str(tmp_path / f"{name}.onnx")).graph.node) for name, _, _ in trials]
    assert ms == pytest.approx([n + 0.2 for n in nodes])   # median of 5 runs x 4 rounds
    assert ms[0] > ms[1] and ms[0] > ms[2]                 # removing a block drops nodes


# ------------------------------------------------------------------- end to end (slow)
def _tiny_run(tmp_path, monkeypatch, model, **overrides):
    from core import config as config_lib
    from experiments import registry
    from experiments import block_family
    monkeypatch.setenv("TEACHER_CACHE", str(tmp_path / "teachers"))
    config = registry.load("blocks_tiny" if model == "resnet20" else f"blocks_{model}")
    if model != "resnet20":          # the real experiment's settings on its tiny model
        tiny = registry.load("blocks_tiny")
        config.teacher.tiny, config.teacher.data_limit = True, 512
        config.teacher.train.update(tiny.teacher.train.to_dict())
        for section in ("family", "finetune"):
            keep = {k: config[section][k] for k in ("optimizer", "learning_rate", "weight_decay")
                    if section == "finetune"}
            config[section].update({**tiny[section].to_dict(), **keep})
        config.measure_runs = tiny.measure_runs
    for key, value in overrides.items():
        config_lib.apply_override(config, key, str(value))
    workdir = tmp_path / "run"
    workdir.mkdir()
    # Left by a run that chose another family: its checkpoints must not be resumed.
    (workdir / "member1" / "finetune").mkdir(parents=True)
    (workdir / "member1" / "finetune" / "stale").write_text("another family")
    return block_family.main(config, str(workdir)), workdir


def _check_family(result, workdir):
    rows = result["family"]
    assert [r["blocks_removed"] for r in rows] == list(range(len(rows)))
    assert len(rows) >= 2
    for smaller, larger in zip(rows[1:], rows[:-1]):
        assert smaller["removed_ids"][:-1] == larger["removed_ids"]
        assert smaller["flops"] < larger["flops"] and smaller["params"] <= larger["params"]
    for k, r in enumerate(rows):
        assert r["parity_max_rel_error"] < 1e-3, r
        assert (workdir / "onnx" / f"member{k}.onnx").exists()
        assert r["batch1_median_ms"] > 0


@pytest.mark.slow
def test_tiny_family_end_to_end_with_benchmark(tmp_path, monkeypatch):
    import json
    result, workdir = _tiny_run(tmp_path, monkeypatch, "resnet20")
    _check_family(result, workdir)
    assert "| 1 |" in (workdir / "result.md").read_text()
    assert (workdir / "member1" / "finetune" / "metrics.jsonl").exists()
    assert not (workdir / "member1" / "finetune" / "stale").exists()
    # The benchmark re-measures the family next to a channel-pruned model of this teacher.
    fake = {"experiment": "prune_fake", "teacher": result["teacher"],
            "accuracy_after_finetune": 0.5,
            "after": {"onnx": str(workdir / "onnx" / "member1.onnx"), "flops": 1}}
    (tmp_path / "prune_fake.json").write_text(json.dumps(fake))
    from benchmarks import block_pruning
    out = block_pruning.main(["--smoke", "--reuse", f"--workdir={workdir}", "--runs=3",
                              "--rounds=1", f"--channel-results={tmp_path}/prune_*.json",
                              f"--out={tmp_path}/bench"])
    assert (tmp_path / "bench.png").stat().st_size > 10000
    assert [c["name"] for c in out["channel_pruned"]] == ["prune_fake"]
    assert len(out["equal_latency"]) == 2
    assert "At equal latency" in (tmp_path / "bench.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mobilenetv2", "vit"])
def test_mobilenetv2_and_vit_configs_on_tiny_models(tmp_path, monkeypatch, model):
    result, workdir = _tiny_run(tmp_path, monkeypatch, model, **{"family.rescore": False})
    _check_family(result, workdir)
    kinds = {b["kind"] for b in result["blocks"]}
    assert kinds == {"residual"}, kinds


@pytest.mark.parametrize("model", ["resnet20", "mobilenetv2", "vit"])
def test_family_members_train_as_long_as_a_channel_pruned_model(model):
    """Equal budgets (issue 21): each family member fine-tunes for the steps a channel-
    pruned model of the same teacher trains: its gate steps and its fine-tune epochs over the
    real training split (read from the data, not from the size table the config uses)."""
    import importlib
    from data import pipeline
    from pruning.configs import blocks_resnet20
    family = blocks_resnet20.get_config(model)
    prune = importlib.import_module(
        f"pruning.configs.{blocks_resnet20.CHANNEL_PRUNED[model]}").get_config()
    data = pipeline.load_dataset(prune.teacher.dataset, prune.teacher.validation_size,
                                 prune.teacher.train.seed)
    finetune_steps = prune.finetune.steps or round(
        prune.finetune.epochs * (len(data.train[0]) // prune.finetune.batch_size))
    assert finetune_steps > 0 and prune.gates.steps > 0
    assert family.finetune.steps == prune.gates.steps + finetune_steps
