"""The MLX transformer against the live reference LTXModel / X0Model, float32 on CPU.

Each tiny reference model is saved as an official checkpoint (with text-connector and VAE keys beside it) and
converted and loaded as generation loads it (convert -> ltx_mlx.load); both then get the same inputs.
Tolerance: max|ours−ref| ≤ 3e-6·max|ref| (measured ≤ 1.1e-6).
"""

import mlx.core as mx
import pytest
import torch
from ltx_core.guidance.perturbations import BatchedPerturbationConfig
from ltx_core.model.transformer import X0Model as RefX0Model
from ltx_core.model.transformer import timestep_embedding

from dit_reference import (build_reference, conditioned, fake_side_tensors, make_inputs, pinned_timestep_embedding,
                           ref_perturbations, save_reference, tiny_config, to_ours)
from ltx_mlx.models.transformer import X0Model
from ltx_mlx.models.perturbations import Perturbation, Perturbations
from ltx_mlx.models.perturbations import PerturbationType as P
from reference import assert_parity
from loading import load_official

ERRORS = {}  # case -> worst relative error, printed at the end of each test


@pytest.fixture(autouse=True)
def _pinned_sinusoid(monkeypatch):
    monkeypatch.setattr(timestep_embedding, "get_timestep_embedding", pinned_timestep_embedding)


def compare(case, ours_out, ref_out):
    worst = 0.0
    for name, o, r in zip(("video", "audio"), ours_out, ref_out):
        assert (o is None) == (r is None), f"{case}: {name} presence differs"
        if r is not None:
            worst = max(worst, assert_parity(o, r, 3e-6, f"{case} {name}"))  # measured <= 1.1e-6
    ERRORS[case] = worst
    return worst


@pytest.fixture(scope="module", params=["2", "2.3", "2.3-interleaved"])
def models(request, tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_config(request.param)
    ref = build_reference(cfg)
    path = save_reference(tmp_path_factory.mktemp("dit") / "model.safetensors", ref, cfg,
                          "2.3.0" if request.param.startswith("2.3") else "2.0.0", fake_side_tensors())
    return request.param, cfg, ref, load_official(path, "transformer")


def run_both(ref, ours, video, audio, per_sample=None, x0=False):
    B = (video or audio).latent.shape[0]
    per_sample = per_sample or [[] for _ in range(B)]
    with torch.no_grad():
        ref_model = RefX0Model(ref) if x0 else ref
        ref_out = ref_model(video, audio, ref_perturbations(per_sample))
    our_model = X0Model(ours) if x0 else ours
    out = our_model(to_ours(video), to_ours(audio), Perturbations(per_sample))
    mx.eval(out)
    return out, ref_out


def test_unpinned_sinusoid_differs_only_by_exp_rounding(models, monkeypatch):
    """Against the reference with torch's own exp: only the 1-ulp frequency rounding separates us."""
    monkeypatch.undo()
    version, cfg, ref, ours = models
    video, audio, _ = make_inputs(cfg)
    out, ref_out = run_both(ref, ours, video, audio)
    errs = [assert_parity(o, r, 2e-5, f"{version} unpinned {n}") for n, o, r in zip("va", out, ref_out)]  # <= 6.9e-6
    print(f"{version} with torch's exp: {errs[0]:.2e} {errs[1]:.2e}")


def test_parity_plain_and_x0(models):
    version, cfg, ref, ours = models
    video, audio, _ = make_inputs(cfg)
    compare(f"{version} plain", *run_both(ref, ours, video, audio))
    compare(f"{version} x0", *run_both(ref, ours, video, audio, x0=True))
    print({k: f"{v:.2e}" for k, v in ERRORS.items() if k.startswith(version + " ")})


def test_parity_conditioning_masks(models):
    version, cfg, ref, ours = models
    video, audio, g = make_inputs(cfg, seed=1)
    video, audio = conditioned(video, audio, g, hw=6)
    compare(f"{version} masks", *run_both(ref, ours, video, audio))
    compare(f"{version} masks x0", *run_both(ref, ours, video, audio, x0=True))


def test_parity_perturbations(models):
    version, cfg, ref, ours = models
    video, audio, _ = make_inputs(cfg, seed=2)
    stg = [Perturbation(P.SKIP_VIDEO_SELF_ATTN, (1,)), Perturbation(P.SKIP_AUDIO_SELF_ATTN, (1,))]
    isolate = [Perturbation(P.SKIP_A2V_CROSS_ATTN), Perturbation(P.SKIP_V2A_CROSS_ATTN)]
    out_stg, ref_stg = run_both(ref, ours, video, audio, [stg])
    compare(f"{version} stg", out_stg, ref_stg)
    plain = ref(video, audio, BatchedPerturbationConfig.empty(1))[0]
    assert (ref_stg[0] - plain).abs().max() > 1e-3, "STG must change the reference output (test is blind otherwise)"
    out_iso, ref_iso = run_both(ref, ours, video, audio, [isolate])
    compare(f"{version} isolated", out_iso, ref_iso)


def test_parity_batch_with_per_sample_perturbations(models):
    version, cfg, ref, ours = models
    video, audio, g = make_inputs(cfg, batch=2, seed=3, fps=25.0)
    video, audio = conditioned(video, audio, g, hw=6)
    per_sample = [[], [Perturbation(P.SKIP_VIDEO_SELF_ATTN, (0, 1)), Perturbation(P.SKIP_A2V_CROSS_ATTN, (1,)),
                       Perturbation(P.SKIP_V2A_CROSS_ATTN, (0,))]]
    compare(f"{version} batch2", *run_both(ref, ours, video, audio, per_sample, x0=True))
    # all samples perturbed: the attention is skipped, not blended
    both = [per_sample[1], per_sample[1]]
    compare(f"{version} batch2 all-perturbed", *run_both(ref, ours, video, audio, both))


def test_parity_single_modality(models):
    version, cfg, ref, ours = models
    video, audio, g = make_inputs(cfg, seed=4)
    video, audio = conditioned(video, audio, g, hw=6)
    compare(f"{version} video-only", *run_both(ref, ours, video, None, x0=True))
    compare(f"{version} audio-only", *run_both(ref, ours, None, audio, x0=True))
    print({k: f"{v:.2e}" for k, v in sorted(ERRORS.items())})


@pytest.mark.parametrize("rope_type", ["split", "interleaved"])
def test_parity_single_frequency_per_axis(tmp_path, rope_type):
    """One frequency per axis on the float32 grid (torch's linspace(0, 1, 1) is [0]): video, audio and cross RoPE."""
    torch.manual_seed(0)
    cfg = tiny_config(f"2-single-frequency-{rope_type}")
    ref = build_reference(cfg)
    ours = load_official(save_reference(tmp_path / "model.safetensors", ref, cfg, "2.0.0"), "transformer")
    video, audio, g = make_inputs(cfg, batch=2, seed=6)
    video, audio = conditioned(video, audio, g, hw=6)
    err = compare(f"single-frequency {rope_type}", *run_both(ref, ours, video, audio, x0=True))
    print(f"single-frequency {rope_type}: {err:.2e}")
