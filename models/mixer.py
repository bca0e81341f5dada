"""MLP-Mixer (Tolstikhin et al. 2021) for small images.

Patches are embedded by a strided conv; each block mixes TOKENS with an MLP applied along
the token axis (transpose, Dense over tokens, transpose back) and then mixes CHANNELS with
an MLP along the channel axis, both pre-norm with residuals. The token-mixing MLP's hidden
layer is a prunable group that lives on a non-channel axis of the activations, which is
what this family tests.
"""
import flax.linen as nn
import jax.numpy as jnp

from models.patch_tokens import embed_patches


class MlpBlock(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        y = nn.gelu(nn.Dense(self.hidden, name="fc1")(x))
        return nn.Dense(x.shape[-1], name="fc2")(y)


class MixerBlock(nn.Module):
    token_mlp_dim: int
    channel_mlp_dim: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(name="norm1")(x)
        y = jnp.swapaxes(y, 1, 2)
        y = MlpBlock(self.token_mlp_dim, name="token_mixing")(y)
        x = x + jnp.swapaxes(y, 1, 2)
        y = nn.LayerNorm(name="norm2")(x)
        return x + MlpBlock(self.channel_mlp_dim, name="channel_mixing")(y)


class MlpMixer(nn.Module):
    num_classes: int = 10
    patch: int = 4
    dim: int = 128
    depth: int = 6
    token_mlp_dim: int = 64
    channel_mlp_dim: int = 512

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no batch statistics or dropout; kept for the zoo's common signature
        x = embed_patches(x, self.dim, self.patch)
        for i in range(self.depth):
            x = MixerBlock(self.token_mlp_dim, self.channel_mlp_dim, name=f"block{i}")(x)
        x = nn.LayerNorm(name="final_norm")(x)
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=1))


def mixer_fmnist(num_classes: int = 10) -> MlpMixer:
    """4x4 patches (49 tokens from 28x28), width 128, 6 blocks."""
    return MlpMixer(num_classes)


def mixer_tiny(num_classes: int = 10) -> MlpMixer:
    """12x12 input, 4x4 patches: 9 tokens, width 16, 2 blocks."""
    return MlpMixer(num_classes, 4, 16, 2, 8, 32)
