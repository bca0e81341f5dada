"""A decoder-only Transformer language model in the Llama style.

Token embedding TIED to the output layer (logits come from ``nn.Embed.attend``, so the
embedding table is both the first and the last weight), pre-norm RMSNorm, causal
grouped-query attention (fewer key/value heads than query heads, each key/value head shared
by a group of query heads via ``jnp.repeat``) with rotary position embeddings on queries
and keys, and a SwiGLU MLP. Inputs are int32 token ids of shape (batch, length).

What this family tests: the embedding width is tied to the output (not prunable freely);
removing a key/value head must remove its whole group of query heads; rotary embeddings
pair channel i with channel i + head_dim/2, so head_dim can only shrink in matched pairs.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


def rotary_embedding(x, base: float = 10000.0):
    """Rotates (batch, length, heads, head_dim) by position, 'rotate half' convention."""
    length, half = x.shape[1], x.shape[-1] // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    cos = jnp.cos(angles)[None, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[None, :, None, :].astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class GroupedQueryAttention(nn.Module):
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x):
        batch, length, dim = x.shape
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.num_heads} heads do not split into "
                             f"{self.num_kv_heads} key/value groups")
        dense = lambda n, name: nn.Dense(n * self.head_dim, use_bias=False, name=name)
        q = dense(self.num_heads, "query")(x).reshape(batch, length, self.num_heads,
                                                      self.head_dim)
        k = dense(self.num_kv_heads, "key")(x).reshape(batch, length, self.num_kv_heads,
                                                       self.head_dim)
        v = dense(self.num_kv_heads, "value")(x).reshape(batch, length, self.num_kv_heads,
                                                         self.head_dim)
        q, k = rotary_embedding(q), rotary_embedding(k)
        group = self.num_heads // self.num_kv_heads
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * self.head_dim ** -0.5
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        out = out.reshape(batch, length, self.num_heads * self.head_dim)
        return nn.Dense(dim, use_bias=False, name="out")(out)


class SwiGLU(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        gate = nn.Dense(self.hidden, use_bias=False, name="gate")(x)
        up = nn.Dense(self.hidden, use_bias=False, name="up")(x)
        return nn.Dense(x.shape[-1], use_bias=False, name="down")(nn.silu(gate) * up)


class DecoderBlock(nn.Module):
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_hidden: int

    @nn.compact
    def __call__(self, x):
        x = x + GroupedQueryAttention(self.num_heads, self.num_kv_heads, self.head_dim,
                                      name="attn")(nn.RMSNorm(name="attn_norm")(x))
        return x + SwiGLU(self.mlp_hidden, name="mlp")(nn.RMSNorm(name="mlp_norm")(x))


class TransformerLM(nn.Module):
    vocab_size: int = 256
    dim: int = 256
    depth: int = 4
    num_heads: int = 8
    num_kv_heads: int = 2
    mlp_hidden: int = 768

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        del train  # no batch statistics or dropout; kept for the zoo's common signature
        embed = nn.Embed(self.vocab_size, self.dim, name="embed")
        x = embed(tokens)
        head_dim = self.dim // self.num_heads
        for i in range(self.depth):
            x = DecoderBlock(self.num_heads, self.num_kv_heads, head_dim, self.mlp_hidden,
                             name=f"block{i}")(x)
        return embed.attend(nn.RMSNorm(name="final_norm")(x))


def transformer_lm_small(vocab_size: int = 256) -> TransformerLM:
    """Byte-level: width 256, 4 blocks, 8 query heads sharing 2 key/value heads."""
    return TransformerLM(vocab_size)


def transformer_lm_tiny(vocab_size: int = 256) -> TransformerLM:
    """Width 16, 2 blocks, 4 query heads of dim 4 sharing 2 key/value heads; byte vocabulary
    like the full model, so both take the same token ids."""
    return TransformerLM(vocab_size, 16, 2, 4, 2, 24)
