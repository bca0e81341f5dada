"""Vision Transformer (Dosovitskiy et al. 2021) for small images, with two attention styles.

Patches are embedded by a strided conv, a learned class token is prepended and a learned
position embedding added; pre-norm encoder blocks (LayerNorm, attention, residual,
LayerNorm, GELU MLP, residual); the final class token is classified.

``attention`` picks how self-attention is written, because compression tools see the two
very differently in the jaxpr:

- ``"linen"``: ``flax.linen.MultiHeadDotProductAttention``, whose query/key/value/out kernels
  are multi-axis (dim, heads, head_dim) DenseGeneral kernels;
- ``"fused"``: hand-written, as in many ports of PyTorch code: ONE Dense producing q, k and v
  side by side (3 * heads * head_dim outputs), reshaped into heads and split, softmax, and
  an output projection. Heads and head_dim appear only through reshapes and slices.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from models.patch_tokens import embed_patches


class FusedQKVAttention(nn.Module):
    """Self-attention with one fused qkv projection and explicit head reshapes."""
    num_heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x):
        batch, tokens, dim = x.shape
        qkv = nn.Dense(3 * self.num_heads * self.head_dim, name="qkv")(x)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * self.head_dim ** -0.5
        weights = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        out = out.reshape(batch, tokens, self.num_heads * self.head_dim)
        return nn.Dense(dim, name="out")(out)


def _linen_attention(num_heads, head_dim):
    return lambda name: nn.MultiHeadDotProductAttention(
        num_heads, qkv_features=num_heads * head_dim, name=name)


def _fused_attention(num_heads, head_dim):
    return lambda name: FusedQKVAttention(num_heads, head_dim, name=name)


ATTENTIONS = {"linen": _linen_attention, "fused": _fused_attention}


class EncoderBlock(nn.Module):
    num_heads: int
    head_dim: int
    mlp_dim: int
    attention: str = "linen"

    @nn.compact
    def __call__(self, x):
        attn = ATTENTIONS[self.attention](self.num_heads, self.head_dim)("attn")
        x = x + attn(nn.LayerNorm(name="norm1")(x))
        y = nn.LayerNorm(name="norm2")(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, name="mlp_fc1")(y))
        return x + nn.Dense(x.shape[-1], name="mlp_fc2")(y)


class ViT(nn.Module):
    num_classes: int = 10
    patch: int = 4
    dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_dim: int = 768
    attention: str = "linen"

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no batch statistics or dropout; kept for the zoo's common signature
        x = embed_patches(x, self.dim, self.patch)
        batch, tokens, _ = x.shape
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.dim)), x], axis=1)
        x = x + self.param("pos_embed", nn.initializers.normal(0.02), (1, tokens + 1, self.dim))
        head_dim = self.dim // self.num_heads
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, head_dim, self.mlp_dim, self.attention,
                             name=f"block{i}")(x)
        x = nn.LayerNorm(name="final_norm")(x[:, 0])
        return nn.Dense(self.num_classes, name="head")(x)


def vit_fmnist(num_classes: int = 10, attention: str = "linen") -> ViT:
    """ViT-Ti width (192, 3 heads) at half depth; 4x4 patches give 49 tokens from 28x28."""
    return ViT(num_classes, attention=attention)


def vit_tiny(num_classes: int = 10, attention: str = "linen") -> ViT:
    """12x12 input, 4x4 patches: 9 tokens plus the class token."""
    return ViT(num_classes, 4, 16, 2, 2, 32, attention)
