"""One DiT forward, ltx-mlx (MLX) against the reference LTXModel (torch), same weights, same machine, same run.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python bench/dit_forward.py --layers 1

The reference is built at the requested size with random weights and saved as an official checkpoint; ltx-mlx
loads that file with `load_transformer`, and the reference times itself in a child process that reads the same
file and the same inputs. The child runs without the LD_PRELOAD: a preloaded OpenBLAS also takes over torch's
exported `sgemm_` (see LD_DEBUG=bindings), and OpenBLAS threads under torch's OpenMP thrash; without it torch uses
its own MKL, as it would anywhere (`--reference-preload` keeps it, to see the difference).

Prints the median time of each after warm-up, the ratio ours/reference, and the achieved GFLOP/s of each (model
FLOPs as the reference computes them, counted by torch's FlopCounterMode) against the large fp32 GEMM throughput
each framework reaches here. "blocks+head" leaves out the input preprocessing, where the reference evaluates the
AdaLN MLP once per token (ltx-mlx: once per distinct timestep): that part is what scales with the 48 layers.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "tests")]

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from loading import load_official  # noqa: E402  (tests/ on sys.path: the one load path)

PREFIX = "model.diffusion_model."


def transformer_config(a) -> dict:
    from dit_reference import ASSERTED

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


def timed(fns: dict, runs: int, warmup: int) -> dict:
    """(median wall s, all wall s, median process CPU s) of each function, calls interleaved."""
    times = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for i in range(warmup + runs):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
                cpu[k].append(time.process_time() - c)
    return {k: (statistics.median(v), v, statistics.median(cpu[k])) for k, v in times.items()}


def make_inputs(a, cfg) -> dict[str, np.ndarray]:
    from ltx_mlx.latents import audio_positions, video_positions

    rng = np.random.default_rng(1)
    f, h, w = grid(a.video_tokens)
    vctx = cfg["caption_channels"] if a.version == "2" else cfg["cross_attention_dim"]
    actx = cfg["caption_channels"] if a.version == "2" else cfg["audio_cross_attention_dim"]
    f32 = np.float32
    return {
        "v.latent": rng.standard_normal((1, a.video_tokens, 128), f32), "v.sigma": np.array([0.8], f32),
        "v.timesteps": np.full((1, a.video_tokens, 1), 0.8, f32), "v.positions": np.array(video_positions(1, f, h, w, 24.0)),
        "v.context": rng.standard_normal((1, a.text_tokens, vctx), f32),
        "a.latent": rng.standard_normal((1, a.audio_tokens, 128), f32), "a.sigma": np.array([0.8], f32),
        "a.timesteps": np.full((1, a.audio_tokens, 1), 0.8, f32), "a.positions": np.array(audio_positions(1, a.audio_tokens)),
        "a.context": rng.standard_normal((1, a.text_tokens, actx), f32),
    }


def reference_side(checkpoint: str, inputs: str, out: str, runs: int, warmup: int, gemm: int):
    """Child process: the reference on the saved checkpoint and inputs; writes timings, FLOPs and outputs."""
    import torch
    from ltx_core.guidance.perturbations import BatchedPerturbationConfig
    from ltx_core.model.transformer import LTXModelConfigurator, Modality
    from safetensors.torch import load_file
    from torch.utils.flop_counter import FlopCounterMode

    from ltx_mlx.weights.checkpoint import SafetensorsFile

    model = LTXModelConfigurator.from_config(SafetensorsFile(checkpoint).config()).to_empty(device="cpu").eval()
    state = {k[len(PREFIX):]: v for k, v in load_file(checkpoint).items() if k.startswith(PREFIX)}
    model.load_state_dict(state, strict=True, assign=True)
    del state
    x = load_file(inputs)
    video, audio = (Modality(*(x[f"{m}.{n}"] for n in ("latent", "sigma", "timesteps", "positions", "context")))
                    for m in "va")
    none = BatchedPerturbationConfig.empty(1)

    @torch.no_grad()
    def forward():
        return model(video, audio, none)

    @torch.no_grad()
    def prepare():
        return model.video_args_preprocessor.prepare(video, audio), model.audio_args_preprocessor.prepare(audio, video)

    counter = FlopCounterMode(display=False)
    with counter:
        outputs = forward()
    flops = counter.get_total_flops()
    with counter:
        prepare()
    prep_flops = counter.get_total_flops()
    a, b = torch.randn(gemm, gemm), torch.randn(gemm, gemm)
    gemm_time = timed({"gemm": lambda: a @ b}, 3, 1)["gemm"][0]
    med = timed({"ref": forward, "ref_prep": prepare}, runs, warmup)
    np.savez(out + ".npz", video=outputs[0].numpy(), audio=outputs[1].numpy())
    with open(out, "w") as f:
        json.dump({"flops": flops, "prep_flops": prep_flops, "gemm_gflops": 2 * gemm ** 3 / gemm_time / 1e9,
                   "threads": torch.get_num_threads(), **{k: v for k, v in med.items()}}, f)


def save_random_checkpoint(path: str, cfg: dict):
    import torch
    from ltx_core.model.transformer import LTXModelConfigurator
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = LTXModelConfigurator.from_config({"transformer": cfg}).to_empty(device="cpu")
    with torch.no_grad():
        tensors = {PREFIX + k: v.normal_(0, 0.02).contiguous() for k, v in ref.state_dict().items()}
    save_file(tensors, path, metadata={"config": json.dumps({"transformer": cfg}), "model_version": "bench"})


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
    p.add_argument("--reference-preload", action="store_true", help="keep LD_PRELOAD for the reference process")
    p.add_argument("--reference-child", nargs=3, metavar=("CKPT", "INPUTS", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.reference_child:
        return reference_side(*a.reference_child, a.runs, a.warmup, a.gemm)

    from safetensors.numpy import save_file

    from ltx_mlx.models.transformer import Modality

    cfg = transformer_config(a)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, inputs, result = (os.path.join(tmp, n) for n in ("dit.safetensors", "inputs.safetensors", "ref.json"))
        save_random_checkpoint(ckpt, cfg)
        x = make_inputs(a, cfg)
        save_file(x, inputs)
        load_before = os.getloadavg()[0]
        env = dict(os.environ)
        if not a.reference_preload:
            env.pop("LD_PRELOAD", None)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--reference-child", ckpt, inputs, result,
                        "--runs", str(a.runs), "--warmup", str(a.warmup), "--gemm", str(a.gemm)], env=env, check=True)
        ref = json.load(open(result))
        ref_out = np.load(result + ".npz")

        model = load_official(ckpt, "transformer")
        video, audio = (Modality(*(mx.array(x[f"{m}.{n}"]) for n in ("latent", "sigma", "timesteps", "positions",
                                                                        "context"))) for m in "va")

        def forward():
            mx.eval(model(video, audio))

        def prepare():
            args = [model._prepare(video, audio, audio=False), model._prepare(audio, video, audio=True)]
            mx.eval([v for s in args for v in vars(s).values() if isinstance(v, mx.array)],
                    [(t.cos, t.sin) for s in args for t in (s.pe, s.cross_pe)])

        out = model(video, audio)
        err = max(float(np.abs(np.array(o) - ref_out[n]).max() / np.abs(ref_out[n]).max())
                  for o, n in zip(out, ("video", "audio")))
        g1, g2 = mx.random.normal((a.gemm, a.gemm)), mx.random.normal((a.gemm, a.gemm))
        gemm_mlx = 2 * a.gemm ** 3 / timed({"g": lambda: mx.eval(g1 @ g2)}, 3, 1)["g"][0] / 1e9
        ours = timed({"ours": forward, "ours_prep": prepare}, a.runs, a.warmup)

    f, h, w = grid(a.video_tokens)
    flops, block_flops = ref["flops"], ref["flops"] - ref["prep_flops"]
    print(f"LTX-{a.version} DiT, {a.layers} layer(s), video {a.heads}x{a.head_dim} audio {a.audio_heads}x{a.audio_head_dim}, "
          f"tokens video {a.video_tokens} ({f}x{h}x{w}) audio {a.audio_tokens} text {a.text_tokens}")
    print(f"reference FLOPs per forward {flops / 1e9:.0f} G, of which input preprocessing {ref['prep_flops'] / 1e9:.0f} G; "
          f"max rel diff ours vs reference {err:.1e}")
    print(f"load (1-min avg) {load_before:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; torch threads "
          f"{ref['threads']}, reference {'with' if a.reference_preload else 'without'} LD_PRELOAD")
    print(f"fp32 GEMM {a.gemm}^3: torch {ref['gemm_gflops']:.0f} GFLOP/s, mlx {gemm_mlx:.0f} GFLOP/s")
    rows = (("ours (mlx fp32)", ours["ours"], ours["ours_prep"], gemm_mlx),
            ("reference (torch)", ref["ref"], ref["ref_prep"], ref["gemm_gflops"]))
    for label, (total, runs, cpu), (prep, _, _), peak in rows:
        blocks = total - prep
        print(f"{label:18s} forward {total:7.3f} s {flops / total / 1e9:5.0f} GFLOP/s ({100 * flops / total / 1e9 / peak:3.0f}% "
              f"of its GEMM) | blocks+head {blocks:7.3f} s {block_flops / blocks / 1e9:5.0f} GFLOP/s "
              f"({100 * block_flops / blocks / 1e9 / peak:3.0f}%) | runs {' '.join(f'{t:.2f}' for t in runs)} "
              f"| CPU time {cpu:.2f} s")
    ratio_blocks = (ours["ours"][0] - ours["ours_prep"][0]) / (ref["ref"][0] - ref["ref_prep"][0])
    print(f"ratio ours/reference: forward {ours['ours'][0] / ref['ref'][0]:.2f}, blocks+head {ratio_blocks:.2f} "
          f"(CPU time, forward: {ours['ours'][2] / ref['ref'][2]:.2f})")


if __name__ == "__main__":
    main()
