"""Audio decode benchmark: audio VAE decoder + vocoder at full size, ours (MLX) vs the reference (PyTorch), same run.

Random weights (the reference's, copied into ours through `sanitize`, so the outputs can be compared too),
float32 on the CPU. Usage:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python bench/audio_decode.py [--seconds 5] \
        [--vocoder hifigan bigvgan] [--scale 1.0]

`--scale` shrinks every channel count (e.g. 0.25) for machines where full size is too slow.
Needs the test environment (torch, ltx-core, tests/stubs/torchaudio on the path for the reference's import).
"""

import argparse
import os
import sys
import time

# Without this, torch's OpenMP threads spin-wait and, on a CPU shared with other jobs, run the reference
# up to ~80× slower on small convs; set before torch is imported so the reference gets its best timing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "stubs")]

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mlx.utils import tree_unflatten  # noqa: E402

from ltx_core.model.audio_vae import AudioDecoderConfigurator, VocoderConfigurator, VocoderWithBWE  # noqa: E402
from ltx_mlx.audio import slaney_mel_filters  # noqa: E402
from ltx_mlx.models import audio_vae, vocoder  # noqa: E402


def audio_vae_config(scale: float) -> dict:
    dd = {"ch": 128, "out_ch": 2, "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [],
          "in_channels": 2, "resolution": 256, "z_channels": 8, "norm_type": "pixel", "causality_axis": "height",
          "dropout": 0.0, "mid_block_add_attention": False, "mel_bins": 64, "double_z": True}
    dd["ch"] = max(8, int(128 * scale) // 8 * 8)
    dd["z_channels"] = dd["ch"] // 16  # statistics length = ch = z · 16
    return {"audio_vae": {"model": {"params": {"sampling_rate": 16000, "ddconfig": dd}},
                          "preprocessing": {"stft": {"hop_length": 160, "filter_length": 1024, "causal": True},
                                            "mel": {"n_mel_channels": 64}}}}


def vocoder_config(kind: str, scale: float) -> dict:
    def ch(n):
        return max(64, int(n * scale) // 64 * 64)

    if kind == "hifigan":
        return {"vocoder": {"resblock": "1", "stereo": True, "upsample_initial_channel": ch(1024)}}
    amp = {"resblock": "AMP1", "stereo": True, "activation": "snakebeta", "use_tanh_at_final": False,
           "use_bias_at_final": False}
    return {"vocoder": {
        "vocoder": dict(amp, upsample_initial_channel=ch(1536), upsample_rates=[5, 2, 2, 2, 2, 2],
                        upsample_kernel_sizes=[11, 4, 4, 4, 4, 4]),
        "bwe": dict(amp, upsample_initial_channel=ch(512), upsample_rates=[6, 5, 2, 2, 2],
                    upsample_kernel_sizes=[12, 11, 4, 4, 4], apply_final_activation=False, input_sampling_rate=16000,
                    output_sampling_rate=48000, hop_length=80, n_fft=512, win_size=512, num_mels=64)}}


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith(("filter", "basis")):
                continue
            if "std-of-means" in name:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.02)
    if isinstance(module, VocoderWithBWE):
        n_fft = module.mel_stft.stft_fn.forward_basis.shape[-1]
        k, n = np.arange(n_fft // 2 + 1)[:, None], np.arange(n_fft)[None, :]
        win = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
        bases = np.concatenate([np.cos(2 * np.pi * k * n / n_fft) * win, -np.sin(2 * np.pi * k * n / n_fft) * win])
        module.mel_stft.stft_fn.forward_basis.copy_(torch.tensor(bases[:, None, :], dtype=torch.float32))
        fb = slaney_mel_filters(n_fft // 2 + 1, 16000, 0.0, 8000.0, module.mel_stft.mel_basis.shape[0])
        module.mel_stft.mel_basis.copy_(torch.tensor(fb.T))
    return module.eval()


def ours_from(ref: torch.nn.Module, ours, sanitize):
    weights = {k: mx.array(v.numpy()) for k, v in ref.state_dict().items()}
    ours.update(tree_unflatten(list(sanitize(weights).items())))
    mx.eval(ours.parameters())
    return ours


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(kind: str, seconds: float, scale: float, warmup_seconds: float, repeats: int = 1):
    dec_cfg = audio_vae_config(scale)
    ref_dec = randomize(AudioDecoderConfigurator.from_config(dec_cfg), 0)
    ref_voc = randomize(VocoderConfigurator.from_config(vocoder_config(kind, scale)), 1)
    dec = ours_from(ref_dec, audio_vae.AudioDecoder(audio_vae.AudioVAEConfig.from_dict(dec_cfg["audio_vae"])),
                    audio_vae.sanitize)
    voc = ours_from(ref_voc, vocoder.build_vocoder(vocoder_config(kind, scale)), vocoder.sanitize)
    z = ref_dec.per_channel_statistics.get_buffer("std-of-means").numel() // 16

    def evaluated(fn, x):
        out = fn(x)
        mx.eval(out)
        return out

    def ours_decode(latent):
        mel, t_dec = timed(lambda: evaluated(dec, latent))
        wav, t_voc = timed(lambda: evaluated(voc, mel))
        return wav, t_dec, t_voc

    def ref_decode(latent):
        with torch.inference_mode():
            mel, t_dec = timed(lambda: ref_dec(latent))
            wav, t_voc = timed(lambda: ref_voc(mel))
        return wav, t_dec, t_voc

    frames = round(seconds * 25)
    g = torch.Generator().manual_seed(2)
    warm = torch.randn(1, z, max(2, round(warmup_seconds * 25)), 16, generator=g)
    latent = torch.randn(1, z, frames, 16, generator=g)
    ours_decode(mx.array(warm.numpy()))
    ref_decode(warm)
    # Interleaved repeats, best of each: other jobs on a shared CPU make single timings noisy.
    o_dec = o_voc = r_dec = r_voc = float("inf")
    for _ in range(repeats):
        ours_wav, dt_dec, dt_voc = ours_decode(mx.array(latent.numpy()))
        o_dec, o_voc = min(o_dec, dt_dec), min(o_voc, dt_voc)
        ref_wav, dt_dec, dt_voc = ref_decode(latent)
        r_dec, r_voc = min(r_dec, dt_dec), min(r_voc, dt_voc)
    ref_np, ours_np = ref_wav.numpy(), np.array(ours_wav)
    err = float(np.abs(ours_np - ref_np).max() / max(np.abs(ref_np).max(), 1e-30))
    rate = ref_voc.output_sampling_rate
    print(f"{kind}: {seconds:g} s of audio → latent (1,{z},{frames},16) → waveform {tuple(ref_np.shape)} @ {rate} Hz"
          f" (channel scale {scale:g}, best of {repeats})")
    print(f"  audio decoder: ours {o_dec:7.2f} s   reference {r_dec:7.2f} s   ratio ref/ours {r_dec / o_dec:5.2f}")
    print(f"  vocoder:       ours {o_voc:7.2f} s   reference {r_voc:7.2f} s   ratio ref/ours {r_voc / o_voc:5.2f}")
    total_o, total_r = o_dec + o_voc, r_dec + r_voc
    print(f"  total:         ours {total_o:7.2f} s   reference {total_r:7.2f} s   ratio ref/ours {total_r / total_o:5.2f}"
          f"   (max|ours-ref|/max|ref| = {err:.1e})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--vocoder", nargs="+", choices=["hifigan", "bigvgan"], default=["hifigan", "bigvgan"])
    p.add_argument("--scale", type=float, default=1.0, help="channel scale (1.0 = released size)")
    p.add_argument("--warmup-seconds", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each (best is reported)")
    args = p.parse_args(argv)
    mx.set_default_device(mx.cpu)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads, OMP_WAIT_POLICY="
          f"{os.environ['OMP_WAIT_POLICY']}), mlx {mx.__version__}, LD_PRELOAD={os.environ.get('LD_PRELOAD', '')}")
    for kind in args.vocoder:
        run(kind, args.seconds, args.scale, args.warmup_seconds, args.repeats)


if __name__ == "__main__":
    main()
