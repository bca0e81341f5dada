"""The unification algebra under channel groups: splits, products, index maps, conflicts."""
import numpy as np

from core.channel_types import ChannelTypes, Concat, Product, Reason


def test_union_shares_root_and_reason():
    t = ChannelTypes()
    a, b, c = t.new(4), t.new(4), t.new(4, Reason("input", "model input"))
    t.unify(a, b)
    assert t.find(a) == t.find(b)
    t.unify(b, c)
    assert t.reason[t.find(a)].kind == "input"


def test_concat_boundary_splits_a_leaf():
    t = ChannelTypes()
    whole, q, kv = t.new(12), t.new(4), t.new(8)
    t.unify(whole, t.concat([q, kv]))
    k, v = t.new(4), t.new(4)
    t.unify(kv, t.concat([k, v]))
    pos = t.positions(whole)
    assert pos[t.find(q)][:, 0].tolist() == [0, 1, 2, 3]
    assert pos[t.find(k)][:, 0].tolist() == [4, 5, 6, 7]
    assert pos[t.find(v)][:, 0].tolist() == [8, 9, 10, 11]


def test_product_index_maps_heads_and_head_dim():
    t = ChannelTypes()
    axis, heads, dim = t.new(6), t.new(2), t.new(3)
    t.unify(axis, t.product([heads, dim]))
    pos = t.positions(axis)
    assert pos[heads].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert pos[dim].tolist() == [[0, 3], [1, 4], [2, 5]]


def test_products_with_different_factorisations_refine_to_common_one():
    t = ChannelTypes()
    a1, a2 = t.new(6), t.new(4)
    b1, b2 = t.new(2), t.new(12)
    t.unify(Product((a1, a2), 24), Product((b1, b2), 24))
    resolved = t.resolve(a1)
    assert isinstance(resolved, Product) and resolved.factors[0] == t.find(b1)
    assert [t.size_of(f) for f in t.resolve(b2).factors] == [3, 4]
    assert t.find(t.resolve(b2).factors[1]) == t.find(a2)


def test_concat_against_product_distributes_the_outer_factor():
    t = ChannelTypes()
    a, b = t.new(4), t.new(4)
    heads, dim = t.new(2), t.new(4)
    t.unify(t.concat([a, b]), t.product([heads, dim]))
    # Each half is one head: Product(1 head, dim) == dim, so both halves ARE head_dim.
    assert t.find(t.resolve(a)) == t.find(dim) == t.find(t.resolve(b))
    assert isinstance(t.resolve(heads), Concat)
    pos = t.positions(t.concat([a, b]))
    assert pos[t.find(dim)].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_conflict_fixes_both_sides():
    t = ChannelTypes()
    a1, a2, b1, b2 = t.new(4), t.new(6), t.new(6), t.new(4)
    ok = t.unify(Product((a1, a2), 24), Product((b1, b2), 24))
    assert not ok
    assert all(t.reason[leaf] is not None and t.reason[leaf].kind == "conflict"
               for leaf in t.leaves(a1) + t.leaves(b1))


def test_fixing_a_refined_node_reaches_its_parts_and_later_parts():
    t = ChannelTypes()
    whole = t.new(8)
    t.fix(whole, Reason("output", "model output"))
    left, right = t.new(3), t.new(5)
    t.unify(whole, Concat((left, right), 8))
    assert t.reason[t.find(left)].kind == "output"
    assert t.reason[t.find(right)].kind == "output"


def test_repeated_leaf_merges_positions():
    t = ChannelTypes()
    a = t.new(3)
    pos = t.positions(t.concat([a, a]))
    assert np.array_equal(pos[a], [[0, 3], [1, 4], [2, 5]])
