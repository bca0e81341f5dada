"""A jraph GNN that embeds block graphs, and architecture embeddings built from them.

Block embedding: node features -> Dense, then ``layers`` rounds of a jraph ``GraphNetwork``
(edge MLP over sender and receiver states, node MLP over the node and its summed incoming
and outgoing messages, residual), then mean and max over each graph's nodes, concatenated
with the graph-level features (``globals``: the block's measured NSR and its position, see
``nas.block_graph.with_block_features``) -> Dense. The block features enter at the readout, so
the message passing over the op graph is unchanged and a graph without them (zeros) embeds as
before.

An architecture is one option per position, so its embedding is the concatenation over
positions of the chosen blocks' embeddings. All distinct block graphs are embedded in one
batched GraphsTuple per forward pass and indexed, which keeps training cheap: a few hundred
architectures share a few dozen block graphs.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph


class MLP(nn.Module):
    features: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            x = nn.Dense(f)(x)
            if i < len(self.features) - 1:
                x = jax.nn.silu(x)
        return x


class BlockEncoder(nn.Module):
    """GraphsTuple (many graphs) -> one embedding per graph, [n_graph, embed_dim]."""
    hidden: int = 32
    embed_dim: int = 16
    layers: int = 3

    @nn.compact
    def __call__(self, graphs: jraph.GraphsTuple):
        h = nn.Dense(self.hidden, name="embed_nodes")(graphs.nodes)
        graphs = graphs._replace(nodes=h)
        for i in range(self.layers):
            edge_mlp = MLP((self.hidden, self.hidden), name=f"edge_mlp{i}")
            node_mlp = MLP((self.hidden, self.hidden), name=f"node_mlp{i}")

            def update_edge(edges, sent, received, globals_, mlp=edge_mlp):
                return mlp(jnp.concatenate([sent, received], -1))

            def update_node(nodes, outgoing, incoming, globals_, mlp=node_mlp):
                return nodes + mlp(jnp.concatenate([nodes, outgoing, incoming], -1))
            graphs = jraph.GraphNetwork(update_edge, update_node)(graphs)
        n_graph = graphs.n_node.shape[0]
        graph_of_node = jnp.repeat(jnp.arange(n_graph), graphs.n_node,
                                   total_repeat_length=graphs.nodes.shape[0])
        mean = jraph.segment_mean(graphs.nodes, graph_of_node, n_graph)
        top = jraph.segment_max(graphs.nodes, graph_of_node, n_graph)
        pooled = jnp.concatenate([mean, top, jnp.asarray(graphs.globals, mean.dtype)], -1)
        return nn.Dense(self.embed_dim, name="readout")(pooled)


class ArchitectureEmbedding(nn.Module):
    """(all block graphs, [n_arch, n_positions] graph indices) -> [n_arch, P * embed_dim]."""
    hidden: int = 32
    embed_dim: int = 16
    layers: int = 3

    @nn.compact
    def __call__(self, graphs, graph_index):
        blocks = BlockEncoder(self.hidden, self.embed_dim, self.layers, name="encoder")(graphs)
        chosen = blocks[graph_index]                       # [n_arch, P, embed_dim]
        return chosen.reshape(chosen.shape[0], -1)


class GraphPredictorNet(nn.Module):
    """Architecture embedding -> one predicted value per architecture and target."""
    hidden: int = 32
    embed_dim: int = 16
    layers: int = 3
    outputs: int = 1

    def setup(self):
        self.embedding = ArchitectureEmbedding(self.hidden, self.embed_dim, self.layers)
        self.head = MLP((64, 64, self.outputs))

    def __call__(self, graphs, graph_index):
        return self.head(self.embedding(graphs, graph_index))

    def embed(self, graphs, graph_index):
        return self.embedding(graphs, graph_index)


__all__ = ["BlockEncoder", "ArchitectureEmbedding", "GraphPredictorNet", "MLP"]
