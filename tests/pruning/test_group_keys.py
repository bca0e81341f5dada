"""Groups named by keys derived from their members' paths, and the one analysis object:
a keep-set by key prunes exactly what the same keep-set by position prunes, survives a
re-analysis that moves group positions (save/load), and what find_groups returns is taken
by prune, masked and core.cost without analysing the model again."""
import importlib
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from core import channel_groups, cost
from models import zoo
from pruning import find_groups, keep_sets, keep_to_masks, masked, prune
from pruning.keep_sets import KeepError

prune_module = importlib.import_module("pruning.prune")   # pruning.prune is the function


class Chain(nn.Module):
    """conv 'b' -> conv 'c' -> dense 'head', optionally behind an extra conv 'a'."""
    extra: bool = False

    @nn.compact
    def __call__(self, x):
        if self.extra:
            x = nn.relu(nn.Conv(6, (3, 3), name="a")(x))
        x = nn.relu(nn.Conv(8, (3, 3), name="b")(x))
        x = nn.relu(nn.Conv(8, (3, 3), name="c")(x))
        return nn.Dense(4, name="head")(x.mean(axis=(1, 2)))


def chain(extra=False):
    module = Chain(extra)
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 3)).astype(np.float32)
    variables = module.init(jax.random.key(1), x[:1])
    return (lambda v, inp: module.apply(v, inp)), variables, x


def test_keys_are_readable_member_paths_and_deterministic():
    fn, variables, x = zoo.instantiate("resnet20")
    groups = find_groups(fn, variables, x[:1])
    again = find_groups(fn, variables, x[:1])
    assert [g.key for g in groups] == [g.key for g in again]
    assert groups[0].key == "params/stage0_block0/conv1/kernel:3"
    for g in groups:
        path, axis = g.key.split("#")[0].split("[")[0].rsplit(":", 1)
        assert any(m.path == path and m.axis == int(axis) for m in g.members), g.key
        assert groups[g.key] is g
    assert f"'{groups[0].key}'" in str(groups[0])


@pytest.mark.parametrize("name", ["vit_fused", "regnet", "mixer"])
def test_keys_are_unique_where_groups_share_an_axis(name):
    """Heads and head_dim of a fused projection, grouped convs, token mixing: groups that
    hold parts of one parameter axis still get distinct keys."""
    fn, variables, x = zoo.instantiate(name)
    groups = find_groups(fn, variables, x[:1])
    keys = [g.key for g in groups]
    assert len(set(keys)) == len(keys)
    assert any("[" in k for k in keys), "some group holds only part of an axis"


def test_keep_by_key_prunes_what_keep_by_position_prunes():
    fn, variables, x = chain()
    groups = find_groups(fn, variables, x[:1])
    b, c = groups["params/b/kernel:3"], groups["params/c/kernel:3"]
    by_id = prune(fn, variables, x[:1], keep={b.id: [0, 3, 5], c.id: [1, 2]}, analysis=groups)
    by_key = prune(fn, variables, x[:1], keep={b.key: [0, 3, 5], c.key: [1, 2]},
                   analysis=groups)
    assert jax.tree.map(np.shape, by_key.variables) == jax.tree.map(np.shape, by_id.variables)
    assert by_key.variables["params"]["b"]["kernel"].shape[-1] == 3
    np.testing.assert_array_equal(by_key.fn(by_key.variables, x), by_id.fn(by_id.variables, x))
    assert by_key.keep_by_key == {b.key: [0, 3, 5], c.key: [1, 2]}
    masks = keep_to_masks(groups, {b.key: [0, 3, 5]})
    np.testing.assert_array_equal(masks[b.id], [1, 0, 0, 1, 0, 1, 0, 0])
    # masks may name groups by key too; 0/1 masks equal the pruned model
    out = masked(fn, groups)(variables, {c.key: keep_to_masks(groups, {c.id: [1, 2]})[c.id],
                                         b.id: masks[b.id]}, x)
    np.testing.assert_allclose(out, by_id.fn(by_id.variables, x), rtol=1e-5, atol=1e-6)


def test_a_saved_keep_set_survives_a_reanalysis_that_moves_positions(tmp_path):
    """Written by key, a keep-set of the chain prunes the same channels of 'b' and 'c' in a
    model with an extra first layer, where both groups sit at other positions."""
    fn, variables, x = chain()
    groups = find_groups(fn, variables, x[:1])
    keep = {groups["params/b/kernel:3"].id: [0, 3, 5], groups["params/c/kernel:3"].id: [7]}
    keep_sets.save(str(tmp_path / "keep.json"), groups, keep)
    assert json.loads((tmp_path / "keep.json").read_text()) == {
        "params/b/kernel:3": [0, 3, 5], "params/c/kernel:3": [7]}

    fn2, variables2, _ = chain(extra=True)
    groups2 = find_groups(fn2, variables2, x[:1])
    loaded = keep_sets.load(str(tmp_path / "keep.json"))
    moved = {g.key: g.id for g in groups2}
    assert [moved[k] for k in loaded] != list(keep), "the positions did change"
    pruned = prune(fn2, variables2, x[:1], keep=loaded, analysis=groups2)
    full = {name: np.asarray(variables2["params"][name]["kernel"]) for name in "bc"}
    np.testing.assert_array_equal(pruned.variables["params"]["b"]["kernel"],
                                  full["b"][..., [0, 3, 5]])
    np.testing.assert_array_equal(pruned.variables["params"]["c"]["kernel"],
                                  full["c"][:, :, [0, 3, 5]][..., [7]])


def test_old_keep_files_by_position_still_load(tmp_path):
    (tmp_path / "keep.json").write_text(json.dumps({"0": [1, 2], "3": []}))
    loaded = keep_sets.load(str(tmp_path / "keep.json"))
    assert set(loaded) == {0, 3}
    np.testing.assert_array_equal(loaded[0], [1, 2])


def test_unknown_or_doubly_named_groups_are_errors():
    fn, variables, x = chain()
    groups = find_groups(fn, variables, x[:1])
    b = groups["params/b/kernel:3"]
    with pytest.raises(KeyError, match="did you mean.*params/b/kernel:3"):
        prune(fn, variables, x[:1], keep={"params/b/kernels:3": [0]}, analysis=groups)
    with pytest.raises(KeyError, match="named twice"):
        prune(fn, variables, x[:1], keep={b.id: [0], b.key: [0]}, analysis=groups)
    with pytest.raises(KeyError, match="no channel group 99"):
        keep_to_masks(groups, {99: [0]})
    with pytest.raises(KeyError, match="position .* or its key"):
        prune(fn, variables, x[:1], keep={True: [0]}, analysis=groups)
    with pytest.raises(KeepError, match=b.key):
        prune(fn, variables, x[:1], keep={b.key: [8]}, analysis=groups)


def test_what_find_groups_returns_is_used_without_reanalysis(monkeypatch):
    fn, variables, x = chain()
    groups = find_groups(fn, variables, x[:1])
    expected_flops = cost.count(fn, variables, x[:1]).flops

    def no_analysis(*args, **kwargs):
        raise AssertionError("the model was analysed again")
    monkeypatch.setattr(prune_module, "analyze", no_analysis)
    monkeypatch.setattr(channel_groups, "analyze_traced", no_analysis)
    monkeypatch.setattr(cost, "analyze_traced", no_analysis)
    keep = {groups["params/b/kernel:3"].key: [0, 1, 2, 3]}
    for given in (groups, list(groups), groups.prunable(), groups.analysis):
        pruned = prune(fn, variables, x[:1], keep=keep, analysis=given)
        assert pruned.analysis is groups.analysis
    assert masked(fn, groups).analysis is groups.analysis
    assert cost.count_analysis(groups.analysis).flops == expected_flops
    assert float(cost.CostModel(groups.analysis)(None).flops) == pytest.approx(expected_flops)
