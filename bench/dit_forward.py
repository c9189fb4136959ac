"""One DiT forward, ltx-mlx (MLX) against the reference LTXModel (torch), same weights, same machine, same run.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python bench/dit_forward.py --layers 1

Prints the median time of each after warm-up, the ratio ours/reference, and the achieved GFLOP/s of each
(model FLOPs as the reference computes them, counted by torch's FlopCounterMode) against the large-GEMM
throughput each framework reaches on this machine. Defaults: LTX-2.3 widths, 1024 video / 126 audio /
1024 text tokens, uniform timesteps (no conditioning), no perturbations.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dit_reference import ASSERTED  # noqa: E402
from ltx_mlx.checkpoint import load_strict  # noqa: E402
from ltx_mlx.latents import audio_positions, video_positions  # noqa: E402
from ltx_mlx.models.transformer import LTXModel, Modality, TransformerConfig, sanitize  # noqa: E402


def config(a) -> dict:
    t = dict(ASSERTED, num_attention_heads=a.heads, attention_head_dim=a.head_dim, audio_num_attention_heads=a.audio_heads,
             audio_attention_head_dim=a.audio_head_dim, num_layers=a.layers, in_channels=128, out_channels=128,
             audio_in_channels=128, audio_out_channels=128, cross_attention_dim=a.heads * a.head_dim,
             audio_cross_attention_dim=a.audio_heads * a.audio_head_dim, caption_channels=3840, norm_eps=1e-6,
             positional_embedding_theta=10000.0, positional_embedding_max_pos=[20, 2048, 2048],
             audio_positional_embedding_max_pos=[20], timestep_scale_multiplier=1000,
             av_ca_timestep_scale_multiplier=1000.0, rope_type="split", frequencies_precision="float64")
    if a.version == "2.3":
        t.update(apply_gated_attention=True, cross_attention_adaln=True, caption_proj_before_connector=True)
    return t


def grid(tokens: int) -> tuple[int, int, int]:
    """A (frames, height, width) latent grid with exactly `tokens` tokens, roughly video-shaped."""
    for f in (8, 6, 5, 4, 3, 2, 1):
        if tokens % f == 0:
            rest = tokens // f
            h = max(d for d in range(1, int(rest ** 0.5) + 1) if rest % d == 0)
            return f, h, rest // h
    return 1, 1, tokens


def median_time(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gemm_gflops(n: int, runs: int = 3) -> tuple[float, float]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    t_torch = median_time(lambda: a @ b, runs, 1)
    x, y = mx.array(a.numpy()), mx.array(b.numpy())
    t_mlx = median_time(lambda: mx.eval(x @ y), runs, 1)
    flops = 2 * n ** 3
    return flops / t_torch / 1e9, flops / t_mlx / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", choices=["2", "2.3"], default="2.3")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--audio-heads", type=int, default=32)
    p.add_argument("--audio-head-dim", type=int, default=64)
    p.add_argument("--video-tokens", type=int, default=1024)
    p.add_argument("--audio-tokens", type=int, default=126)
    p.add_argument("--text-tokens", type=int, default=1024)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gemm", type=int, default=4096, help="size of the square fp32 GEMM that measures peak")
    p.add_argument("--skip-reference", action="store_true", help="time ours only (e.g. where torch is slow)")
    a = p.parse_args(argv)

    from ltx_core.guidance.perturbations import BatchedPerturbationConfig
    from ltx_core.model.transformer import LTXModelConfigurator, Modality as RefModality

    torch.manual_seed(0)
    cfg = config(a)
    ref = LTXModelConfigurator.from_config({"transformer": cfg}).to_empty(device="cpu").eval()
    with torch.no_grad():
        for _, t in ref.state_dict().items():
            t.normal_(0, 0.02)
    ours = LTXModel(TransformerConfig.from_dict(cfg))
    load_strict(ours, sanitize({k: mx.array(v.numpy()) for k, v in ref.state_dict().items()}), "transformer")
    mx.eval(ours.parameters())

    f, h, w = grid(a.video_tokens)
    Tv, Ta, S = a.video_tokens, a.audio_tokens, a.text_tokens
    vctx = cfg["caption_channels"] if a.version == "2" else cfg["cross_attention_dim"]
    actx = cfg["caption_channels"] if a.version == "2" else cfg["audio_cross_attention_dim"]
    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([0.8])
    vpos, apos = video_positions(1, f, h, w, 24.0), audio_positions(1, Ta)
    rv = RefModality(latent=torch.randn(1, Tv, 128, generator=g), sigma=sigma, timesteps=torch.full((1, Tv, 1), 0.8),
                     positions=torch.from_numpy(np.array(vpos)), context=torch.randn(1, S, vctx, generator=g))
    ra = RefModality(latent=torch.randn(1, Ta, 128, generator=g), sigma=sigma, timesteps=torch.full((1, Ta, 1), 0.8),
                     positions=torch.from_numpy(np.array(apos)), context=torch.randn(1, S, actx, generator=g))
    ov = Modality(*(mx.array(t.numpy()) for t in (rv.latent, rv.sigma, rv.timesteps, rv.positions, rv.context)))
    oa = Modality(*(mx.array(t.numpy()) for t in (ra.latent, ra.sigma, ra.timesteps, ra.positions, ra.context)))
    no_perturbation = BatchedPerturbationConfig.empty(1)

    def run_ref():
        with torch.no_grad():
            return ref(rv, ra, no_perturbation)

    def run_ours():
        out = ours(ov, oa)
        mx.eval(out)
        return out

    def prep_ref():
        with torch.no_grad():
            return ref.video_args_preprocessor.prepare(rv, ra), ref.audio_args_preprocessor.prepare(ra, rv)

    def prep_ours():
        v, au = ours._prepare(ov, oa, audio=False), ours._prepare(oa, ov, audio=True)
        mx.eval([x for args in (v, au) for x in vars(args).values() if isinstance(x, mx.array)],
                [t.cos for t in (v.pe, v.cross_pe, au.pe, au.cross_pe)], [t.sin for t in (v.pe, v.cross_pe, au.pe, au.cross_pe)])

    counter = FlopCounterMode(display=False)
    with counter:
        ref_out = run_ref()
    flops = counter.get_total_flops()
    with counter:
        prep_ref()
    prep_flops = counter.get_total_flops()
    out = run_ours()
    err = max(float(np.abs(np.array(o) - r.numpy()).max() / np.abs(r.numpy()).max()) for o, r in zip(out, ref_out))

    gemm_torch, gemm_mlx = gemm_gflops(a.gemm)
    fns = {"ours": run_ours, "ours_prep": prep_ours}
    if not a.skip_reference:
        fns.update(ref=run_ref, ref_prep=prep_ref)
    times = {k: [] for k in fns}
    for i in range(a.warmup + a.runs):  # interleaved, so that changing load hits both alike
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if i >= a.warmup:
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"LTX-{a.version} DiT, {a.layers} layer(s), video {a.heads}x{a.head_dim} audio {a.audio_heads}x{a.audio_head_dim}, "
          f"tokens video {Tv} ({f}x{h}x{w}) audio {Ta} text {S}")
    print(f"reference FLOPs per forward: {flops / 1e9:.0f} G, of which preprocessing {prep_flops / 1e9:.0f} G "
          f"(per-token AdaLN; ltx-mlx evaluates it once per distinct timestep)")
    print(f"load: {os.getloadavg()[0]:.2f} (1-min avg) on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
          f"max rel diff ours vs reference {err:.1e}")
    print(f"fp32 GEMM {a.gemm}^3: torch {gemm_torch:.0f} GFLOP/s, mlx {gemm_mlx:.0f} GFLOP/s")
    block_flops = flops - prep_flops
    for name, peak in (("ours", gemm_mlx), ("ref", gemm_torch)):
        if name not in med:
            continue
        total, blocks = med[name], med[name] - med[name + "_prep"]
        label = "ours (mlx fp32)" if name == "ours" else "reference (torch)"
        print(f"{label:18s} forward {total:7.3f} s ({flops / total / 1e9:4.0f} GFLOP/s, {100 * flops / total / 1e9 / peak:3.0f}% "
              f"of its GEMM) | blocks+head {blocks:7.3f} s ({block_flops / blocks / 1e9:4.0f} GFLOP/s, "
              f"{100 * block_flops / blocks / 1e9 / peak:3.0f}%) | runs {' '.join(f'{t:.2f}' for t in times[name])}")
    if "ref" in med:
        print(f"ratio ours/reference: forward {med['ours'] / med['ref']:.2f}, blocks+head "
              f"{(med['ours'] - med['ours_prep']) / (med['ref'] - med['ref_prep']):.2f}")

if __name__ == "__main__":
    main()
