"""Block graphs from jaxprs (expected node and edge counts) and the jraph GNN embedding."""
import jax
import jax.numpy as jnp
import numpy as np

from nas import block_graph, gnn
from nas.student_blocks import BlockChoice, build_student, init_student


def residual_fn(variables, x):
    y = jax.lax.conv_general_dilated(x, variables["w"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y * variables["scale"])      # scale is a parameter: mul is an op node
    return y + x


def test_hand_written_block_has_expected_nodes_and_edges():
    variables = {"w": jnp.ones((3, 3, 4, 4)), "scale": jnp.ones((4,))}
    g = block_graph.block_graph(residual_fn, variables, jnp.ones((1, 8, 8, 4)))
    # input, conv, mul, relu, add; edges input->conv, conv->mul, mul->relu, relu->add, input->add
    assert block_graph.node_kinds(g) == ["input", "conv", "mul", "relu", "add"]
    assert int(g.n_node[0]) == 5 and int(g.n_edge[0]) == 5
    assert sorted(zip(g.senders.tolist(), g.receivers.tolist())) == [
        (0, 1), (0, 4), (1, 2), (2, 3), (3, 4)]
    assert g.nodes.shape == (5, block_graph.NODE_FEATURES)


def test_student_graphs_reflect_their_choices():
    shape = (1, 8, 8, 8)
    kinds = {}
    for choice in (BlockChoice("inverted_residual", kernel=5, expansion=2, activation="hardswish"),
                   BlockChoice("plain", depth=2, activation="relu6")):
        module = build_student(choice, shape, shape)
        variables = init_student(module, shape)
        g = block_graph.block_graph(lambda v, x: module.apply(v, x), variables, jnp.ones(shape))
        kinds[choice.type] = block_graph.node_kinds(g)
        assert int(g.n_edge[0]) >= int(g.n_node[0]) - 1       # connected
    ir = kinds["inverted_residual"]
    assert ir.count("conv") == 2 and ir.count("dwconv") == 1 and ir.count("hardswish") == 2
    plain = kinds["plain"]
    assert plain.count("conv") == 2 and plain.count("relu6") == 2 and "dwconv" not in plain


def test_gnn_embeds_every_graph_and_concatenates_over_positions():
    variables = {"w": jnp.ones((3, 3, 4, 4)), "scale": jnp.ones((4,))}
    g1 = block_graph.block_graph(residual_fn, variables, jnp.ones((1, 8, 8, 4)))
    g2 = block_graph.block_graph(lambda v, x: jax.nn.silu(x) * 2.0, {}, jnp.ones((1, 8, 8, 4)))
    graphs = jax.tree.map(jnp.asarray, block_graph.batch_graphs([g1, g2]))
    net = gnn.ArchitectureEmbedding(hidden=8, embed_dim=4, layers=2)
    index = jnp.asarray([[0, 1], [1, 0], [0, 0]])
    params = net.init(jax.random.key(0), graphs, index)
    z = np.asarray(net.apply(params, graphs, index))
    assert z.shape == (3, 8)
    np.testing.assert_allclose(z[0, :4], z[1, 4:], rtol=1e-6)    # same block, same embedding
    np.testing.assert_allclose(z[2, :4], z[2, 4:], rtol=1e-6)
    assert np.abs(z[0, :4] - z[0, 4:]).max() > 1e-4              # different blocks differ


def test_block_features_are_the_graph_globals():
    variables = {"w": jnp.ones((3, 3, 4, 4)), "scale": jnp.ones((4,))}
    g = block_graph.block_graph(residual_fn, variables, jnp.ones((1, 8, 8, 4)))
    assert g.globals.shape == (1, len(block_graph.BLOCK_FEATURES)) and not g.globals.any()
    placed = [block_graph.with_block_features(g, nsr, p, 3)
              for p, nsr in enumerate((0.1, 0.2, 0.3))]
    batched = block_graph.batch_graphs(placed)
    np.testing.assert_allclose(batched.globals, [[0.1, 0.0], [0.2, 0.5], [0.3, 1.0]], rtol=1e-6)
    np.testing.assert_array_equal(placed[2].nodes, g.nodes)        # the op graph is unchanged
