"""Noise: the Gaussian noiser in patchified token space, seeded noise streams, and res_2s noise
standardisation.

torch's generators cannot be reproduced in MLX, so every consumer takes either injected noise or an
MLX key/seed; a `NoiseStream` plays the role of one `torch.Generator` (successive draws differ).
"""

from collections.abc import Callable, Iterable
from dataclasses import replace

import mlx.core as mx
import numpy as np

from .stats import centred_std


class NoiseStream:
    """Successive standard-normal draws from one seed or key, like one torch.Generator.

    Negative seeds wrap modulo 2**64 as `torch.Generator.manual_seed` does (-1 -> 2**64 - 1).
    """

    def __init__(self, seed_or_key):
        if isinstance(seed_or_key, mx.array):
            self.key = seed_or_key
        else:
            self.key = mx.random.key(int(seed_or_key) % 2**64)

    def __call__(self, shape, dtype=mx.float32) -> mx.array:
        self.key, sub = mx.random.split(self.key)
        return mx.random.normal(tuple(shape), dtype=dtype, key=sub)


def as_noise_source(source) -> Callable:
    """A callable `(shape, dtype) -> array` from a NoiseStream/callable, a seed, an MLX key, or a
    sequence of arrays consumed in order."""
    if callable(source):
        return source
    if isinstance(source, (int, np.integer)) or (isinstance(source, mx.array) and source.dtype == mx.uint32):
        return NoiseStream(source)
    if isinstance(source, Iterable) and not isinstance(source, (mx.array, np.ndarray, str)):
        items = iter(source)

        def take(shape, dtype=mx.float32):
            try:
                noise = next(items)
            except StopIteration:
                raise ValueError("The injected noise sequence ran out: supply one array per draw.") from None
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"Injected noise has shape {tuple(noise.shape)}, expected {tuple(shape)}.")
            return mx.array(noise).astype(dtype)

        return take
    raise ValueError(
        f"Noise source must be a seed, an MLX key, a callable or a list of arrays (one per draw), "
        f"got {type(source).__name__}."
    )


def add_noise(latent: mx.array, denoise_mask: mx.array, noise: mx.array, noise_scale: float = 1.0) -> mx.array:
    """noise·(mask·scale) + latent·(1 − mask·scale) in float32, returned in the latent's dtype."""
    if tuple(noise.shape) != tuple(latent.shape):
        raise ValueError(f"Noise shape {tuple(noise.shape)} does not match the latent's {tuple(latent.shape)}.")
    scaled = denoise_mask.astype(mx.float32) * noise_scale
    return (noise.astype(latent.dtype) * scaled + latent * (1 - scaled)).astype(latent.dtype)


class GaussianNoiser:
    """Noises a latent state (token space, (B, T, C)) with noise in the latent's dtype.

    `source`: a seed, an MLX key, a NoiseStream, or a sequence of arrays (e.g. video then audio noise
    for cross-framework reproduction). One noiser serves video then audio, as in the reference.
    """

    def __init__(self, source):
        self.draw = as_noise_source(source)

    def __call__(self, state, noise_scale: float = 1.0):
        noise = self.draw(state.latent.shape, state.latent.dtype)
        return replace(state, latent=add_noise(state.latent, state.denoise_mask, noise, noise_scale))


def standardize_noise(noise: mx.array) -> mx.array:
    """res_2s SDE noise: standardised over the whole tensor, then per sample over the last two axes.

    The reference does this in float64; here it is float32 (MLX has no float64 on GPU).
    """
    centred, std = centred_std(noise.astype(mx.float32))
    centred, std = centred_std(centred / std, axis=(-2, -1), keepdims=True)
    return centred / std
