"""Guidance math and guided-pass orchestration against the live reference (float32)."""

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
import torch
from ltx_core.components import guiders as ref
from ltx_core.guidance.perturbations import PerturbationType as RefPT
from ltx_core.types import LatentState as RefLatentState
from ltx_pipelines.utils.helpers import multi_modal_guider_denoising_func, multi_modal_guider_factory_denoising_func

from ltx_mlx.diffusion import guiders as ours
from ltx_mlx.models.perturbations import PerturbationType, is_perturbed
from reference import assert_parity, to_mx

SHAPE = (1, 24, 16)


def _tensors(n, shape=SHAPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (1 + i) + 0.3 * i for i in range(n)]


PARAMS = [
    dict(),
    dict(cfg_scale=3.0),
    dict(stg_scale=1.0, stg_blocks=[1]),
    dict(modality_scale=3.0),
    dict(cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0),
    dict(cfg_scale=7.0, stg_scale=1.0, rescale_scale=1.0, modality_scale=3.0),
    dict(cfg_scale=3.0, rescale_scale=0.45, modality_scale=3.0),
]


@pytest.mark.parametrize("kw", PARAMS)
def test_multimodal_calculate(kw):
    cond, neg, ptb, mod = _tensors(4)
    r = ref.MultiModalGuider(ref.MultiModalGuiderParams(**kw)).calculate(cond, neg, ptb, mod)
    o = ours.MultiModalGuider(ours.MultiModalGuiderParams(**kw)).calculate(*map(to_mx, (cond, neg, ptb, mod)))
    err = assert_parity(o, r, 1e-7, f"MultiModalGuider {kw}")  # measured 0 (1e-7: an ulp)
    print(f"MultiModalGuider {kw}: rel err {err:.2e}")


def test_multimodal_calculate_with_missing_passes_as_zero():
    (cond,) = _tensors(1)
    kw = dict(cfg_scale=3.0, rescale_scale=0.7)
    r = ref.MultiModalGuider(ref.MultiModalGuiderParams(**kw)).calculate(cond, 0.0, 0.0, 0.0)
    o = ours.MultiModalGuider(ours.MultiModalGuiderParams(**kw)).calculate(to_mx(cond), 0.0, 0.0, 0.0)
    assert_parity(o, r, 1e-7)  # measured 0


def test_rescale_uses_whole_tensor_unbiased_std():
    cond, pred_like = _tensors(2, shape=(2, 5, 3))
    g = ours.MultiModalGuider(ours.MultiModalGuiderParams(cfg_scale=2.0, rescale_scale=1.0))
    out = np.array(g.calculate(to_mx(cond), to_mx(pred_like), 0.0, 0.0))
    pred = (2 * cond - pred_like).numpy()
    expected = pred * (cond.numpy().std(ddof=1) / pred.std(ddof=1))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_skip_step_and_flags():
    for kw in PARAMS + [dict(skip_step=1), dict(skip_step=2, cfg_scale=1.0000000001)]:
        r, o = ref.MultiModalGuider(ref.MultiModalGuiderParams(**kw)), ours.MultiModalGuider(ours.MultiModalGuiderParams(**kw))
        assert [o.should_skip_step(i) for i in range(9)] == [r.should_skip_step(i) for i in range(9)]
        assert o.do_unconditional_generation() == r.do_unconditional_generation()
        assert o.do_perturbed_generation() == r.do_perturbed_generation()
        assert o.do_isolated_modality_generation() == r.do_isolated_modality_generation()


def test_factory_bins_match_reference():
    table = {1.0: dict(cfg_scale=3.0), 0.5: dict(cfg_scale=2.0), 0.2: dict(cfg_scale=1.5)}
    r = ref.MultiModalGuiderFactory.from_dict({k: ref.MultiModalGuiderParams(**v) for k, v in table.items()})
    o = ours.MultiModalGuiderFactory.from_dict({k: ours.MultiModalGuiderParams(**v) for k, v in table.items()})
    for sigma in [1.5, 1.0, 0.99, 0.5, 0.4999, 0.2, 0.1, 0.0]:
        assert o.params(sigma).cfg_scale == r.params(sigma).cfg_scale, sigma
    c = ours.MultiModalGuiderFactory.constant(ours.MultiModalGuiderParams(cfg_scale=4.0))
    assert c.build_from_sigma(0.3).params.cfg_scale == 4.0
    with pytest.raises(ValueError, match="non-empty"):
        ours.MultiModalGuiderFactory.from_dict({})


# ---- guided denoising: the same fake transformer on both sides ----------------------------------
# x0 depends on the latent, the context (positive/negative), the perturbed blocks and the enabled
# flags of both modalities, so any difference in which passes run, or how, shows in the result.

N_BLOCKS = 4
_CODES = [(RefPT.SKIP_VIDEO_SELF_ATTN, PerturbationType.SKIP_VIDEO_SELF_ATTN, 1.0),
          (RefPT.SKIP_AUDIO_SELF_ATTN, PerturbationType.SKIP_AUDIO_SELF_ATTN, 16.0),
          (RefPT.SKIP_A2V_CROSS_ATTN, PerturbationType.SKIP_A2V_CROSS_ATTN, 256.0),
          (RefPT.SKIP_V2A_CROSS_ATTN, PerturbationType.SKIP_V2A_CROSS_ATTN, 4096.0)]


def _code(perturbed) -> float:
    return sum(w * (b + 1) for _, t, w in _CODES for b in range(N_BLOCKS) if perturbed(t, b))


def _fake_x0(latent, ctx, code, own_enabled, other_enabled, sigma, k):
    out = latent * (0.8 - 0.1 * k) + ctx * 0.5 + 1e-4 * code + 0.25 * other_enabled - 0.2 * sigma
    return out if own_enabled else latent * 0.3


class RefFakeTransformer:
    def __call__(self, video, audio, perturbations):
        def perturbed(t, b):
            ours_to_ref = {o: r for r, o, _ in _CODES}
            return perturbations is not None and perturbations.all_in_batch(ours_to_ref[t], b)

        code = _code(perturbed)
        s = float(video.sigma)
        xv = _fake_x0(video.latent, video.context[0, 0, 0], code, video.enabled, audio.enabled, s, 0)
        xa = _fake_x0(audio.latent, audio.context[0, 0, 0], code, audio.enabled, video.enabled, s, 1)
        return xv, xa


def our_fake_model(contexts):
    def model_fn(video_state, audio_state, sigma, passes):
        outs = []
        for p in passes:
            code = _code(lambda t, b: is_perturbed(p.perturbations, t, b))
            cv, ca = contexts[p.negative]
            xv = _fake_x0(video_state.latent, cv, code, p.video_enabled, p.audio_enabled, sigma, 0)
            xa = _fake_x0(audio_state.latent, ca, code, p.audio_enabled, p.video_enabled, sigma, 1)
            outs.append((xv, xa))
        return outs

    return model_fn


@dataclasses.dataclass
class State:
    latent: mx.array
    denoise_mask: mx.array
    clean_latent: mx.array


GUIDED = [
    (dict(cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, stg_blocks=[1]),
     dict(cfg_scale=7.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, stg_blocks=[2])),
    (dict(cfg_scale=3.0, rescale_scale=0.45, modality_scale=3.0), dict(cfg_scale=7.0, rescale_scale=1.0, modality_scale=3.0)),
    (dict(stg_scale=1.0, stg_blocks=[0, 3]), dict()),
    (dict(), dict(modality_scale=2.0, skip_step=1)),
    (dict(cfg_scale=3.0, skip_step=1), dict(cfg_scale=2.0, stg_scale=0.5, stg_blocks=None, skip_step=2)),
    (dict(cfg_scale=3.0, skip_step=1), dict(cfg_scale=2.0, skip_step=1)),
]


@pytest.mark.parametrize("vkw,akw", GUIDED)
@pytest.mark.parametrize("use_factory", [False, True])
def test_guided_denoising_matches_reference(vkw, akw, use_factory):
    g = torch.Generator().manual_seed(5)
    pos_v, neg_v, pos_a, neg_a = (torch.randn(1, 3, 8, generator=g) for _ in range(4))
    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.4, 0.2, 0.1, 0.0])
    vp, ap = ref.MultiModalGuiderParams(**vkw), ref.MultiModalGuiderParams(**akw)
    if use_factory:
        ref_fn = multi_modal_guider_factory_denoising_func(
            ref.create_multimodal_guider_factory(vp, neg_v), ref.create_multimodal_guider_factory(ap, neg_a),
            pos_v, pos_a, RefFakeTransformer())
        our_fn = ours.guided_denoising_fn(
            our_fake_model({False: (to_mx(pos_v[0, 0, 0]), to_mx(pos_a[0, 0, 0])), True: (to_mx(neg_v[0, 0, 0]), to_mx(neg_a[0, 0, 0]))}),
            ours.MultiModalGuiderFactory.constant(ours.MultiModalGuiderParams(**vkw)),
            ours.MultiModalGuiderFactory.constant(ours.MultiModalGuiderParams(**akw)))
    else:
        ref_fn = multi_modal_guider_denoising_func(
            ref.MultiModalGuider(vp, neg_v), ref.MultiModalGuider(ap, neg_a), pos_v, pos_a, RefFakeTransformer())
        our_fn = ours.guided_denoising_fn(
            our_fake_model({False: (to_mx(pos_v[0, 0, 0]), to_mx(pos_a[0, 0, 0])), True: (to_mx(neg_v[0, 0, 0]), to_mx(neg_a[0, 0, 0]))}),
            ours.MultiModalGuiderParams(**vkw), ours.MultiModalGuiderParams(**akw))
    worst = 0.0
    for step in range(len(sigmas) - 1):
        lv, la = (torch.randn(1, 10, 8, generator=g), torch.randn(1, 6, 8, generator=g))
        mask_v, mask_a = torch.ones(1, 10, 1), torch.ones(1, 6, 1)
        rv = RefLatentState(lv, mask_v, torch.zeros(1, 3, 10, 2), lv)
        ra = RefLatentState(la, mask_a, torch.zeros(1, 1, 6, 2), la)
        ref_v, ref_a = ref_fn(rv, ra, sigmas, step)
        ov, oa = our_fn(State(to_mx(lv), to_mx(mask_v), to_mx(lv)), State(to_mx(la), to_mx(mask_a), to_mx(la)),
                        [float(s) for s in sigmas], step)
        worst = max(worst, assert_parity(ov, ref_v, 6e-7, f"video step {step}"),  # measured <= 2.5e-7
                    assert_parity(oa, ref_a, 6e-7, f"audio step {step}"))
    print(f"guided denoising {vkw} / {akw} factory={use_factory}: worst rel err {worst:.2e}")


def test_pass_list_for_pipeline_defaults():
    v = ours.MultiModalGuider(ours.MultiModalGuiderParams(cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, stg_blocks=[28]))
    a = ours.MultiModalGuider(ours.MultiModalGuiderParams(cfg_scale=7.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0, stg_blocks=[28]))
    passes = ours.guidance_passes(v, a, 0)
    assert [p.name for p in passes] == ["cond", "negative", "perturbed", "isolated"]
    assert [p.negative for p in passes] == [False, True, False, False]
    stg = passes[2].perturbations
    assert is_perturbed(stg, PerturbationType.SKIP_VIDEO_SELF_ATTN, 28) and not is_perturbed(stg, PerturbationType.SKIP_VIDEO_SELF_ATTN, 27)
    assert is_perturbed(stg, PerturbationType.SKIP_AUDIO_SELF_ATTN, 28)
    assert not is_perturbed(stg, PerturbationType.SKIP_A2V_CROSS_ATTN, 28)
    iso = passes[3].perturbations
    assert all(is_perturbed(iso, t, b) for t in (PerturbationType.SKIP_A2V_CROSS_ATTN, PerturbationType.SKIP_V2A_CROSS_ATTN) for b in (0, 47))
    assert not is_perturbed(iso, PerturbationType.SKIP_VIDEO_SELF_ATTN, 0)
    assert ours.guidance_passes(ours.MultiModalGuider(), ours.MultiModalGuider(), 3) == [ours.GuidancePass("cond")]


def test_bad_guider_type_raises():
    with pytest.raises(ValueError, match="MultiModalGuiderParams"):
        ours.guided_denoising_fn(lambda *a: None, {"cfg_scale": 3.0})


def test_rescale_at_full_latent_size():
    # 24576 video tokens x 128 (stage 2 at 1024x1536): a plain float32 mx.sum drifts ~1e-3 here, so the
    # reference is also run in float64.
    cond, neg, ptb, mod = _tensors(4, shape=(1, 24576, 128), seed=11)
    kw = dict(cfg_scale=3.0, stg_scale=1.0, rescale_scale=0.7, modality_scale=3.0)
    o = ours.MultiModalGuider(ours.MultiModalGuiderParams(**kw)).calculate(*map(to_mx, (cond, neg, ptb, mod)))
    g = ref.MultiModalGuider(ref.MultiModalGuiderParams(**kw))
    err = assert_parity(o, g.calculate(cond, neg, ptb, mod), 5e-7, "full-size rescale vs float32 reference")  # 1.7e-7
    err64 = assert_parity(o, g.calculate(*(t.double() for t in (cond, neg, ptb, mod))), 6e-7, "vs float64")  # 2.6e-7
    print(f"full size: rescale rel err {err:.2e} (vs float64 {err64:.2e})")


def test_model_fn_output_count_is_checked():
    fn = ours.guided_denoising_fn(lambda v, a, s, passes: [], ours.MultiModalGuiderParams(cfg_scale=3.0))
    st = State(mx.zeros((1, 2, 3)), mx.ones((1, 2, 1)), mx.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="one \\(x0_video, x0_audio\\) per pass"):
        fn(st, st, [1.0, 0.0], 0)


def test_simple_denoising_fn_runs_only_the_positive_pass():
    seen = []

    def model_fn(v, a, sigma, passes):
        seen.append((sigma, passes))
        return [(v.latent * 2, a.latent * 3)]

    st = State(mx.ones((1, 2, 3)), mx.ones((1, 2, 1)), mx.zeros((1, 2, 3)))
    xv, xa = ours.simple_denoising_fn(model_fn)(st, st, [0.5, 0.25, 0.0], 1)
    assert seen == [(0.25, [ours.GuidancePass("cond")])]
    assert mx.array_equal(xv, st.latent * 2) and mx.array_equal(xa, st.latent * 3)


@pytest.mark.parametrize("sampler", ["euler", "res2s"])
def test_guided_loops_match_reference(sampler):
    """Guidance (CFG+STG+modality+rescale, audio skip-step) plugged into each loop, end to end."""
    from ltx_core.components.diffusion_steps import EulerDiffusionStep, Res2sDiffusionStep
    from ltx_pipelines.utils import samplers as ref_samplers

    from ltx_mlx.diffusion.samplers import euler_denoising_loop, res2s_denoising_loop

    g = torch.Generator().manual_seed(8)
    pos_v, neg_v, pos_a, neg_a = (torch.randn(1, 3, 8, generator=g) for _ in range(4))
    lv, la = torch.randn(1, 10, 8, generator=g), torch.randn(1, 6, 8, generator=g)
    vkw, akw = GUIDED[0][0], dict(GUIDED[0][1], skip_step=1)
    ref_fn = multi_modal_guider_denoising_func(
        ref.MultiModalGuider(ref.MultiModalGuiderParams(**vkw), neg_v),
        ref.MultiModalGuider(ref.MultiModalGuiderParams(**akw), neg_a), pos_v, pos_a, RefFakeTransformer())
    contexts = {False: (to_mx(pos_v[0, 0, 0]), to_mx(pos_a[0, 0, 0])), True: (to_mx(neg_v[0, 0, 0]), to_mx(neg_a[0, 0, 0]))}
    our_fn = ours.guided_denoising_fn(our_fake_model(contexts), ours.MultiModalGuiderParams(**vkw), ours.MultiModalGuiderParams(**akw))
    # Small latents keep the fake model contractive enough for 8 steps.
    rv = RefLatentState(lv * 0.5, torch.ones(1, 10, 1), torch.zeros(1, 3, 10, 2), lv * 0.5)
    ra = RefLatentState(la * 0.5, torch.ones(1, 6, 1), torch.zeros(1, 1, 6, 2), la * 0.5)
    ov, oa = (State(to_mx(s.latent), to_mx(s.denoise_mask), to_mx(s.clean_latent)) for s in (rv, ra))
    sig = torch.tensor([1.0, 0.99375, 0.9875, 0.975, 0.909375, 0.725, 0.421875, 0.0])
    if sampler == "euler":
        ref_v, ref_a = ref_samplers.euler_denoising_loop(sig, rv, ra, EulerDiffusionStep(), ref_fn)
        loop = euler_denoising_loop(sig.numpy(), ov, oa, our_fn)
    else:
        zeros = {2**64 - 1: [], 9999: []}
        noise = {k: [torch.randn(s.latent.shape, generator=g, dtype=torch.float64) for _ in range(7) for s in (rv, ra)] for k in zeros}

        def new_noise(x, gen):
            raw = noise[gen.initial_seed()].pop(0)
            return ref_samplers._channelwise_normalize((raw - raw.mean()) / raw.std())

        queued = {k: [to_mx(x) for x in v] for k, v in noise.items()}
        ref_v, ref_a = ref_samplers.res2s_audio_video_denoising_loop(
            sig, rv, ra, Res2sDiffusionStep(), ref_fn, new_noise_fn=new_noise, model_dtype=torch.float32)
        loop = res2s_denoising_loop(sig.numpy(), ov, oa, our_fn, step_noise=queued[2**64 - 1], substep_noise=queued[9999])
    for states in loop:
        mx.eval(states[0].latent, states[1].latent)
    ev = assert_parity(states[0].latent, ref_v.latent, 2e-6, "video")  # measured <= 8.2e-7
    ea = assert_parity(states[1].latent, ref_a.latent, 2e-6, "audio")
    print(f"guided {sampler} loop: rel err video {ev:.2e} audio {ea:.2e}")
