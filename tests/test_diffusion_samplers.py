"""Noiser, Euler and res_2s steps and loops against the live reference, with the same fake
denoiser (a fixed linear map) on both sides and injected noise."""

import dataclasses
import math

import mlx.core as mx
import numpy as np
import pytest
import torch
from ltx_core.components.diffusion_steps import EulerDiffusionStep, Res2sDiffusionStep
from ltx_core.components.noisers import GaussianNoiser as RefNoiser
from ltx_core.components.schedulers import LTX2Scheduler as RefScheduler
from ltx_core.types import LatentState as RefState
from ltx_pipelines.utils import samplers as ref_samplers
from ltx_pipelines.utils.constants import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES
from ltx_pipelines.utils.res2s import get_res2s_coefficients

from ltx_mlx.diffusion.noise import GaussianNoiser, NoiseStream, standardize_noise
from ltx_mlx.diffusion.samplers import (
    euler_denoising_loop,
    gradient_estimating_euler_denoising_loop,
    res2s_denoising_loop,
)
from ltx_mlx.diffusion.schedulers import LTX2Scheduler
from ltx_mlx.diffusion.steps import euler_step, res2s_coefficients, sde_coefficients
from reference import assert_parity, rel_err, to_mx, to_np

C = 16


@dataclasses.dataclass
class State:
    latent: mx.array
    denoise_mask: mx.array
    clean_latent: mx.array


def _pair(shape, seed, cond_tokens=(), strength=1.0, batch=1):
    """Reference and MLX states with the same latent, clean latent and a conditioning mask."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn((batch,) + shape, generator=g)
    clean = torch.randn((batch,) + shape, generator=g)
    mask = torch.ones(batch, shape[0], 1)
    for t in cond_tokens:
        mask[:, t] = 1.0 - strength
        latent[:, t] = clean[:, t]  # conditioning writes the clean tokens into the latent
    ref = RefState(latent, mask, torch.zeros(batch, 3, shape[0], 2), clean)
    return ref, State(to_mx(latent), to_mx(mask), to_mx(clean))


def _maps(seed=1, c=C):
    g = torch.Generator().manual_seed(seed)
    return [(0.6 * torch.eye(c) + torch.randn(c, c, generator=g) * 0.6 / c**0.5, torch.randn(c, generator=g) * 0.2) for _ in range(2)]


def _sigma32(sigmas, i):
    return float(np.float32(float(sigmas[i])))


def ref_fake_denoiser(maps):
    def fn(video_state, audio_state, sigmas, step_index):
        s = _sigma32(sigmas, step_index)
        return tuple((st.latent.float() @ w) * (1 - 0.5 * s) + b * s for st, (w, b) in zip((video_state, audio_state), maps))

    return fn


def our_fake_denoiser(maps):
    mx_maps = [(to_mx(w), to_mx(b)) for w, b in maps]

    def fn(video_state, audio_state, sigmas, step_index):
        s = _sigma32(sigmas, step_index)
        return tuple((st.latent.astype(mx.float32) @ w) * (1 - 0.5 * s) + b * s for st, (w, b) in zip((video_state, audio_state), mx_maps))

    return fn


def _run(loop):
    n = 0
    for states in loop:
        mx.eval(*(s.latent for s in states))
        n += 1
    return states, n


# ---- noiser ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 0.909375])
def test_gaussian_noiser_with_injected_noise(dtype, scale):
    rv, ov = _pair((24, C), 0, cond_tokens=range(6), strength=0.7)
    ra, oa = _pair((10, C), 1)
    rv, ra = (dataclasses.replace(s, latent=s.latent.to(dtype)) for s in (rv, ra))
    ov, oa = (dataclasses.replace(s, latent=s.latent.astype(mx.bfloat16 if dtype == torch.bfloat16 else mx.float32)) for s in (ov, oa))
    g = torch.Generator().manual_seed(42)
    noises = [torch.randn(s.latent.shape, generator=g, dtype=dtype) for s in (rv, ra)]
    ref_noiser = RefNoiser(torch.Generator().manual_seed(42))
    ref_out = [ref_noiser(s, scale).latent for s in (rv, ra)]
    noiser = GaussianNoiser([to_mx(n) for n in noises])
    ours = [noiser(s, scale).latent for s in (ov, oa)]
    for o, r in zip(ours, ref_out):
        assert o.dtype == (mx.bfloat16 if dtype == torch.bfloat16 else mx.float32)
        assert_parity(o, r, tol=0.0)


def test_seeded_noiser_is_deterministic_and_streams():
    _, ov = _pair((24, C), 0)
    a1, a2 = GaussianNoiser(7)(ov).latent, GaussianNoiser(7)(ov).latent
    assert mx.array_equal(a1, a2)
    noiser = GaussianNoiser(7)
    first, second = noiser(ov).latent, noiser(ov).latent
    assert not mx.array_equal(first, second)
    with pytest.raises(ValueError, match="Injected noise has shape"):
        GaussianNoiser([mx.zeros((1, 3, C))])(ov)


# ---- Euler -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_euler_step_matches_reference_exactly(dtype):
    g = torch.Generator().manual_seed(3)
    x, x0 = (torch.randn(2, 40, C, generator=g).to(dtype) for _ in range(2))
    sigmas = RefScheduler().execute(steps=30)
    for i in (0, 7, 28):
        r = EulerDiffusionStep().step(x, x0, sigmas, i)
        o = euler_step(to_mx(x).astype(mx.bfloat16 if dtype == torch.bfloat16 else mx.float32),
                       to_mx(x0).astype(mx.bfloat16 if dtype == torch.bfloat16 else mx.float32), sigmas.numpy(), i)
        np.testing.assert_array_equal(to_np(o), to_np(r))


def test_bf16_velocity_rounding_is_applied():
    g = torch.Generator().manual_seed(4)
    x, x0 = (torch.randn(1, 200, C, generator=g).to(torch.bfloat16) for _ in range(2))
    sigmas = [0.725, 0.421875]
    ours = to_np(euler_step(to_mx(x).astype(mx.bfloat16), to_mx(x0).astype(mx.bfloat16), sigmas, 0))
    xf, x0f = x.float(), x0.float()
    unrounded = (xf + (xf - x0f) / np.float32(0.725) * float(np.float32(0.421875) - np.float32(0.725))).to(torch.bfloat16).float().numpy()
    rounded = (xf + ((xf - x0f) / np.float32(0.725)).to(torch.bfloat16).float() * float(np.float32(0.421875) - np.float32(0.725))).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(ours, rounded)
    assert (ours != unrounded).sum() > 0


@pytest.mark.parametrize("sigmas", [DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES, "ltx30", "ltx8"])
def test_euler_loop_matches_reference(sigmas):
    named = {"ltx30": lambda: RefScheduler().execute(steps=30), "ltx8": lambda: RefScheduler().execute(steps=8)}
    sig = named[sigmas]() if isinstance(sigmas, str) else torch.tensor(sigmas)
    maps = _maps()
    rv, ov = _pair((24, C), 0, cond_tokens=range(4), strength=1.0)
    ra, oa = _pair((10, C), 1, cond_tokens=(2, 3), strength=0.4)
    ref_v, ref_a = ref_samplers.euler_denoising_loop(sig, rv, ra, EulerDiffusionStep(), ref_fake_denoiser(maps))
    (ov, oa), n = _run(euler_denoising_loop(sig.numpy(), ov, oa, our_fake_denoiser(maps)))
    assert n == len(sig) - 1
    ev = assert_parity(ov.latent, ref_v.latent, 1e-7, "video")  # measured 0 (1e-7: an ulp)
    ea = assert_parity(oa.latent, ref_a.latent, 1e-7, "audio")
    # fully conditioned tokens never move
    np.testing.assert_array_equal(to_np(ov.latent)[:, :4], rv.latent[:, :4].numpy())
    print(f"Euler loop {sigmas if isinstance(sigmas, str) else len(sigmas) - 1}: rel err video {ev:.2e} audio {ea:.2e}")


def test_gradient_estimating_loop_matches_reference():
    sig = torch.tensor(DISTILLED_SIGMA_VALUES)
    maps = _maps(2)
    rv, ov = _pair((24, C), 0, cond_tokens=(0,), strength=0.5)
    ra, oa = _pair((10, C), 1)
    ref_v, ref_a = ref_samplers.gradient_estimating_euler_denoising_loop(sig, rv, ra, EulerDiffusionStep(), ref_fake_denoiser(maps))
    (ov, oa), n = _run(gradient_estimating_euler_denoising_loop(sig.numpy(), ov, oa, our_fake_denoiser(maps)))
    assert n == len(sig) - 1
    e = max(assert_parity(ov.latent, ref_v.latent, 1e-7), assert_parity(oa.latent, ref_a.latent, 1e-7))  # measured 0
    print(f"gradient-estimating Euler: rel err {e:.2e}")


# ---- res_2s ----------------------------------------------------------------------------------------

def test_res2s_coefficients_match_reference():
    for h in (0.01, 0.1, 0.2263, 0.5, 1.0, 4.5, 1e-12):
        assert res2s_coefficients(h) == get_res2s_coefficients(h, {}, 0.5)


@pytest.mark.parametrize("sigma_next", [0.9, 0.5, 0.1, 0.0011, 0.0])
def test_sde_coefficients_match_reference(sigma_next):
    for precision, tdtype in ((np.float64, torch.float64), (np.float32, torch.float32)):
        ref = Res2sDiffusionStep.get_sde_coeff(torch.tensor(sigma_next, dtype=tdtype), sigma_up=torch.tensor(sigma_next, dtype=tdtype) * 0.5)
        ours = sde_coefficients(sigma_next, precision)
        for o, r in zip(ours, ref):
            assert o == r.item() and np.asarray(o).dtype == precision


def test_noise_standardisation_matches_reference():
    g = torch.Generator().manual_seed(9)
    for shape in ((1, 50, C), (2, 30, C)):
        raw = torch.randn(shape, generator=g, dtype=torch.float64) * 1.3 + 0.2
        ref = ref_samplers._get_new_noise(torch.empty(shape), _FixedRandn.generator_for([raw]))
        err = assert_parity(standardize_noise(to_mx(raw)), ref, 3e-7, "standardised noise")  # measured <= 1.3e-7
        print(f"noise standardisation {shape}: float32 vs reference float64 rel err {err:.2e}")


class _FixedRandn:
    """Stands in for torch.randn inside the reference's noise function: pops pre-drawn noise per generator seed."""

    queues = {}

    @classmethod
    def generator_for(cls, arrays, seed=12345):
        cls.queues[seed] = list(arrays)
        _FixedRandn.install()
        return torch.Generator().manual_seed(seed)

    @staticmethod
    def install():
        if getattr(torch.randn, "_fixed", False):
            return
        real = torch.randn

        def fake(*args, generator=None, **kwargs):
            q = _FixedRandn.queues.get(generator.initial_seed()) if generator is not None else None
            return q.pop(0) if q else real(*args, generator=generator, **kwargs)

        fake._fixed = True
        torch.randn = fake
        _FixedRandn.real = real


@pytest.fixture(autouse=True)
def _restore_randn():
    yield
    if getattr(torch.randn, "_fixed", False):
        torch.randn = _FixedRandn.real
    _FixedRandn.queues = {}


def _raw_noise(shapes, n_steps, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n_steps) for shape in shapes]


RES2S_CASES = {
    "hq-like 6 steps, token shift": lambda: RefScheduler().execute(steps=6, latent=torch.empty(1, 128, 4, 6, 8)),
    "hq 15 steps": lambda: RefScheduler().execute(steps=15, latent=torch.empty(1, 128, 16, 17, 30)),
    "stage 2 distilled": lambda: torch.tensor(STAGE_2_DISTILLED_SIGMA_VALUES),
    "no final zero": lambda: torch.tensor([1.0, 0.8, 0.5, 0.2]),
}


@pytest.mark.parametrize("case", list(RES2S_CASES) + ["stage 2 distilled, 4096 x 128 tokens"])
def test_res2s_loop_matches_reference_with_injected_noise(case):
    # The large case guards the whole-latent noise statistics against float32 reduction drift.
    big = case.endswith("tokens")
    sig = RES2S_CASES["stage 2 distilled" if big else case]()
    n_steps = len(sig) - 1
    c = 128 if big else C
    maps = _maps(3, c)
    rv, ov = _pair((4096 if big else 24, c), 0, cond_tokens=range(3), strength=0.8)
    ra, oa = _pair((126 if big else 10, c), 1)
    shapes = [rv.latent.shape, ra.latent.shape]
    step_raw, sub_raw = _raw_noise(shapes, n_steps, 100), _raw_noise(shapes, n_steps, 200)
    _FixedRandn.queues = {2**64 - 1: list(step_raw), 9999: list(sub_raw)}
    _FixedRandn.install()
    ref_v, ref_a = ref_samplers.res2s_audio_video_denoising_loop(
        sig, rv, ra, Res2sDiffusionStep(), ref_fake_denoiser(maps), model_dtype=torch.float32)
    assert not _FixedRandn.queues[2**64 - 1] and not _FixedRandn.queues[9999], "reference drew a different number of noises"
    (ov, oa), n = _run(res2s_denoising_loop(
        sig.numpy(), ov, oa, our_fake_denoiser(maps),
        step_noise=[to_mx(x) for x in step_raw], substep_noise=[to_mx(x) for x in sub_raw]))
    assert n == n_steps
    ev = assert_parity(ov.latent, ref_v.latent, 1.2e-6, "video")  # measured <= 4.8e-7
    ea = assert_parity(oa.latent, ref_a.latent, 1.2e-6, "audio")
    print(f"res_2s [{case}]: float32 vs reference float64 rel err video {ev:.2e} audio {ea:.2e}")


def test_res2s_default_seeds_and_determinism():
    sig = list(STAGE_2_DISTILLED_SIGMA_VALUES)
    maps = _maps(4)
    _, ov = _pair((24, C), 0)
    _, oa = _pair((10, C), 1)
    (a_v, a_a), _ = _run(res2s_denoising_loop(sig, ov, oa, our_fake_denoiser(maps)))
    (b_v, b_a), _ = _run(res2s_denoising_loop(sig, ov, oa, our_fake_denoiser(maps),
                                              step_noise=NoiseStream(2**64 - 1), substep_noise=NoiseStream(9999)))
    (c_v, _), _ = _run(res2s_denoising_loop(sig, ov, oa, our_fake_denoiser(maps), noise_seed=5))
    assert mx.array_equal(a_v.latent, b_v.latent) and mx.array_equal(a_a.latent, b_a.latent)
    assert not mx.array_equal(a_v.latent, c_v.latent)


def test_res2s_rejects_short_noise_and_schedules():
    _, ov = _pair((24, C), 0)
    _, oa = _pair((10, C), 1)
    with pytest.raises(ValueError, match="ran out"):
        _run(res2s_denoising_loop([0.9, 0.5, 0.0], ov, oa, our_fake_denoiser(_maps()), step_noise=[], substep_noise=[]))
    with pytest.raises(ValueError, match="at least two"):
        _run(euler_denoising_loop([1.0], ov, oa, our_fake_denoiser(_maps())))


def test_euler_loop_in_bf16_matches_reference():
    sig = torch.tensor(DISTILLED_SIGMA_VALUES)
    maps = _maps(5)
    rv, ov = _pair((24, C), 0, cond_tokens=range(4), strength=0.6)
    ra, oa = _pair((10, C), 1)
    rv, ra = (dataclasses.replace(s, latent=s.latent.bfloat16(), clean_latent=s.clean_latent.bfloat16()) for s in (rv, ra))
    ov, oa = (dataclasses.replace(s, latent=s.latent.astype(mx.bfloat16), clean_latent=s.clean_latent.astype(mx.bfloat16)) for s in (ov, oa))

    def ref_fn(v, a, sigmas, i):
        return tuple(x.to(torch.bfloat16) for x in ref_fake_denoiser(maps)(v, a, sigmas, i))

    def our_fn(v, a, sigmas, i):
        return tuple(x.astype(mx.bfloat16) for x in our_fake_denoiser(maps)(v, a, sigmas, i))

    ref_v, ref_a = ref_samplers.euler_denoising_loop(sig, rv, ra, EulerDiffusionStep(), ref_fn)
    (ov, oa), _ = _run(euler_denoising_loop(sig.numpy(), ov, oa, our_fn))
    assert ov.latent.dtype == mx.bfloat16
    e = max(rel_err(ov.latent, ref_v.latent), rel_err(oa.latent, ref_a.latent))
    print(f"Euler loop bf16: rel err {e:.2e}")
    assert e == 0.0


def test_loops_take_our_scheduler_output_and_check_denoiser_shapes():
    maps = _maps(6)
    rv, ov = _pair((24, C), 0)
    ra, oa = _pair((10, C), 1)
    ref_v, _ = ref_samplers.euler_denoising_loop(RefScheduler().execute(steps=8), rv, ra, EulerDiffusionStep(), ref_fake_denoiser(maps))
    (v, _), n = _run(euler_denoising_loop(LTX2Scheduler().execute(steps=8), ov, oa, our_fake_denoiser(maps)))
    assert n == 8
    assert_parity(v.latent, ref_v.latent, 1e-7)  # measured 0
    with pytest.raises(ValueError, match="video x0 of shape"):
        _run(euler_denoising_loop([1.0, 0.0], ov, oa, lambda v, a, s, i: (v.latent[:, :3], a.latent)))


def test_res2s_in_bf16_stays_close_to_reference():
    # bf16 latents between evaluations, as in the pipelines; float32-vs-float64 anchors may flip a bf16 rounding.
    sig = torch.tensor(STAGE_2_DISTILLED_SIGMA_VALUES)
    maps = _maps(7)
    rv, ov = _pair((24, C), 0, cond_tokens=range(3), strength=1.0)
    ra, oa = _pair((10, C), 1)
    rv, ra = (dataclasses.replace(s, latent=s.latent.bfloat16(), clean_latent=s.clean_latent.bfloat16()) for s in (rv, ra))
    ov, oa = (dataclasses.replace(s, latent=s.latent.astype(mx.bfloat16), clean_latent=s.clean_latent.astype(mx.bfloat16)) for s in (ov, oa))
    shapes = [rv.latent.shape, ra.latent.shape]
    step_raw, sub_raw = _raw_noise(shapes, 3, 300), _raw_noise(shapes, 3, 400)
    _FixedRandn.queues = {2**64 - 1: list(step_raw), 9999: list(sub_raw)}
    _FixedRandn.install()
    ref_v, ref_a = ref_samplers.res2s_audio_video_denoising_loop(sig, rv, ra, Res2sDiffusionStep(), ref_fake_denoiser(maps))
    (v, a), _ = _run(res2s_denoising_loop(sig.numpy(), ov, oa, our_fake_denoiser(maps),
                                          step_noise=[to_mx(x) for x in step_raw], substep_noise=[to_mx(x) for x in sub_raw]))
    assert v.latent.dtype == mx.bfloat16 and ref_v.latent.dtype == torch.bfloat16
    ulp = 2.0**-8
    ev, ea = rel_err(v.latent, ref_v.latent), rel_err(a.latent, ref_a.latent)
    mism = max(float((to_np(v.latent) != to_np(ref_v.latent)).mean()), float((to_np(a.latent) != to_np(ref_a.latent)).mean()))
    print(f"res_2s bf16: rel err video {ev:.2e} audio {ea:.2e}, fraction of differing elements {mism:.3%}")
    assert ev <= ulp and ea <= ulp


def test_noise_source_errors():
    _, ov = _pair((24, C), 0)
    with pytest.raises(ValueError, match="list of arrays"):
        GaussianNoiser(mx.zeros((1, 24, C)))(ov)
    with pytest.raises(ValueError, match="ran out"):
        GaussianNoiser([])(ov)
