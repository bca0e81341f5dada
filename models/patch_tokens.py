"""Patch embedding shared by the token models (ViT, MLP-Mixer): a strided conv cuts the image
into non-overlapping ``patch`` x ``patch`` patches and embeds each as one token."""
import flax.linen as nn


def embed_patches(x, dim: int, patch: int):
    """NHWC image -> (batch, tokens, dim), tokens in row-major patch order. Called inside a
    compact ``__call__``: the conv is the caller's submodule ``patch_embed``."""
    x = nn.Conv(dim, (patch, patch), patch, padding="VALID", name="patch_embed")(x)
    batch, h, w, _ = x.shape
    return x.reshape(batch, h * w, dim)
