"""Sigma schedules against the live reference, bit for bit (float32)."""

import numpy as np
import pytest
import torch
from ltx_core.components.schedulers import LTX2Scheduler as RefScheduler
from ltx_pipelines.utils import constants as ref_constants

from ltx_mlx.diffusion.schedulers import (
    DISTILLED_SIGMA_VALUES,
    STAGE_2_DISTILLED_SIGMA_VALUES,
    LTX2Scheduler,
)


def _same(ours, ref):
    a, b = np.array(ours), ref.numpy()
    assert a.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("steps", [8, 15, 30, 40, 2, 3, 7, 23, 64])
def test_default_tokens_schedule_is_bit_exact(steps):
    _same(LTX2Scheduler().execute(steps=steps), RefScheduler().execute(steps=steps))


@pytest.mark.parametrize(
    "shape",
    [
        (1, 128, 16, 17, 30),  # HQ stage 1, 121 frames at 544x960
        (1, 128, 16, 16, 24),  # two-stage stage 1 at 512x768
        (1, 128, 16, 32, 48),  # full size 1024x1536
        (1, 128, 2, 4, 6),  # tiny
        (2, 128, 5, 9, 11),
        (1, 128, 1, 32, 32),  # exactly the 1024-token anchor
    ],
)
@pytest.mark.parametrize("steps", [8, 15, 30, 40])
def test_token_dependent_shift_is_bit_exact(shape, steps):
    ref = RefScheduler().execute(steps=steps, latent=torch.empty(shape))
    _same(LTX2Scheduler().execute(steps=steps, latent=shape), ref)
    _same(LTX2Scheduler().execute(steps=steps, latent=np.empty(shape, np.float32)), ref)


@pytest.mark.parametrize(
    "kwargs",
    [dict(stretch=False), dict(terminal=0.05), dict(max_shift=1.5, base_shift=0.5), dict(default_number_of_tokens=777)],
)
def test_options_are_bit_exact(kwargs):
    _same(LTX2Scheduler().execute(steps=20, **kwargs), RefScheduler().execute(steps=20, **kwargs))


def test_documented_values():
    hq = np.array(LTX2Scheduler().execute(steps=15, latent=(1, 128, 16, 17, 30)))
    expected = [1.0, 0.993491, 0.986015, 0.97734, 0.967151, 0.955015, 0.940314, 0.92214, 0.899096, 0.868923,
                0.827707, 0.768028, 0.673897, 0.503378, 0.1, 0.0]
    np.testing.assert_allclose(hq, expected, atol=1e-6)
    s30 = np.array(LTX2Scheduler().execute(steps=30))
    assert s30[0] == np.float32(0.99999994) and abs(s30[-2] - 0.1) < 1e-7 and s30[-1] == 0


def test_distilled_tables_match_reference():
    assert list(DISTILLED_SIGMA_VALUES) == ref_constants.DISTILLED_SIGMA_VALUES
    assert list(STAGE_2_DISTILLED_SIGMA_VALUES) == ref_constants.STAGE_2_DISTILLED_SIGMA_VALUES


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8"])
def test_bad_steps_raise(bad):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        LTX2Scheduler().execute(steps=bad)


def test_patchified_latent_is_rejected():
    with pytest.raises(ValueError, match="unpatchified latent"):
        LTX2Scheduler().execute(steps=8, latent=(1, 128))
