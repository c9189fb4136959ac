"""How far our float32 res_2s drifts from the reference's float64 tensor math at a realistic size.

Stage-1 HQ-like state (6144 video tokens, 126 audio tokens, 128 channels), the 15-step token-shifted
schedule, a fixed linear fake denoiser on both sides and identical injected noise. CPU, a few seconds.
Run: PYTHONPATH=.:tests/stubs LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python bench/diffusion_res2s_precision.py
"""

import dataclasses
import sys
import time

sys.path[:0] = [".", "tests/stubs"]  # our package and the torchaudio stub the reference imports

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ltx_core.components.diffusion_steps import Res2sDiffusionStep
from ltx_core.components.schedulers import LTX2Scheduler
from ltx_core.types import LatentState
from ltx_pipelines.utils import samplers as ref_samplers

from ltx_mlx.diffusion.samplers import res2s_denoising_loop  # noqa: E402


@dataclasses.dataclass
class State:
    latent: mx.array
    denoise_mask: mx.array
    clean_latent: mx.array


def main(video_tokens=6144, audio_tokens=126, C=128, steps=15):
    g = torch.Generator().manual_seed(0)
    maps = [(0.6 * torch.eye(C) + torch.randn(C, C, generator=g) * 0.04, torch.randn(C, generator=g) * 0.2) for _ in range(2)]
    lat = [torch.randn(1, t, C, generator=g) for t in (video_tokens, audio_tokens)]
    masks = [torch.ones(1, t, 1) for t in (video_tokens, audio_tokens)]
    sig = LTX2Scheduler().execute(steps=steps, latent=torch.empty(1, 128, 16, 16, 24))
    raw = {k: [torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(steps) for x in lat] for k in ("step", "sub")}

    def ref_fn(video_state, audio_state, sigmas, step_index):
        v, a, i = video_state, audio_state, step_index
        s = float(np.float32(float(sigmas[i])))
        return tuple((st.latent.float() @ w) * (1 - 0.5 * s) + b * s for st, (w, b) in zip((v, a), maps))

    queues = {2**64 - 1: list(raw["step"]), 9999: list(raw["sub"])}
    real = torch.randn
    torch.randn = lambda *a, generator=None, **k: queues[generator.initial_seed()].pop(0)
    t0 = time.time()
    ref_v, ref_a = ref_samplers.res2s_audio_video_denoising_loop(
        sig, LatentState(lat[0], masks[0], None, lat[0]), LatentState(lat[1], masks[1], None, lat[1]),
        Res2sDiffusionStep(), ref_fn, model_dtype=torch.float32)
    t_ref = time.time() - t0
    torch.randn = real

    mx_maps = [(mx.array(w.numpy()), mx.array(b.numpy())) for w, b in maps]

    def our_fn(v, a, sigmas, i):
        s = float(np.float32(float(sigmas[i])))
        return tuple((st.latent @ w) * (1 - 0.5 * s) + b * s for st, (w, b) in zip((v, a), mx_maps))

    states = [State(mx.array(x.numpy()), mx.array(m.numpy()), mx.array(x.numpy())) for x, m in zip(lat, masks)]
    t0 = time.time()
    for states in res2s_denoising_loop(
        sig.numpy(), *states, our_fn,
        step_noise=[mx.array(x.numpy()) for x in raw["step"]], substep_noise=[mx.array(x.numpy()) for x in raw["sub"]]):
        mx.eval(*(s.latent for s in states))
    t_ours = time.time() - t0
    for name, o, r in (("video", states[0].latent, ref_v.latent), ("audio", states[1].latent, ref_a.latent)):
        a, b = np.array(o), r.numpy()
        print(f"{name}: max|ours-ref| = {np.abs(a - b).max():.3e}, max|ref| = {np.abs(b).max():.3f}, "
              f"rel = {np.abs(a - b).max() / np.abs(b).max():.3e}")
    print(f"time: reference (float64 tensors) {t_ref:.1f}s, ours (float32, MLX CPU) {t_ours:.1f}s")


if __name__ == "__main__":
    main()
