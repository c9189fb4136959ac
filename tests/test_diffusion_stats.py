"""Accurate reductions for whole-latent statistics."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from ltx_pipelines.utils import samplers as ref_samplers

from ltx_mlx.diffusion.noise import standardize_noise
from ltx_mlx.diffusion.stats import block_sum, centred_std
from reference import assert_parity


@pytest.mark.parametrize("shape,axis", [((1, 24576, 128), None), ((2, 6144, 128), (-2, -1)), ((3, 7, 5), 1), ((4, 9, 11), (0, 2))])
def test_block_sum_and_std_match_float64(shape, axis):
    x = np.random.default_rng(0).standard_normal(shape) * 2 + 0.5
    x32 = mx.array(x.astype(np.float32))
    s = np.array(block_sum(x32, axis, keepdims=True))
    ref = x.sum(axis=axis, keepdims=True)
    assert np.abs(s - ref).max() <= 1.2e-6 * np.abs(ref).max()  # measured <= 4.9e-7
    _, std = centred_std(x32, axis, keepdims=True)
    ref_std = x.std(axis=axis, ddof=1, keepdims=True)
    assert np.abs(np.array(std) - ref_std).max() <= 1e-6 * ref_std.max()
    assert block_sum(x32, axis).shape == ref.squeeze(axis).shape if axis is not None else block_sum(x32).shape == ()


def test_noise_standardisation_at_full_size():
    raw = torch.randn((1, 24576, 128), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = ref_samplers._channelwise_normalize((raw - raw.mean()) / raw.std())
    err = assert_parity(standardize_noise(mx.array(raw.numpy().astype(np.float32))), ref, 1.5e-6, "noise standardisation")  # 5.6e-7
    print(f"full-size noise standardisation: float32 vs reference float64 rel err {err:.2e}")
