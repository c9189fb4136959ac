"""Low-memory mode against resident weights: a full-width LTX-2.3 transformer (few layers, random weights) written
as a converted folder, then the same forward with every block resident and with the blocks streamed from the
folder (`load_component(..., stream=True)`, what `--low-memory` does), side by side in one run.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python bench/low_memory.py --layers 4 > bench/low_memory.txt

Prints, for each mode: the weight bytes the folder's headers give (non-block, per block), the memory held after
loading, the peak of one forward (`mx.get_peak_memory`, reset before it) and the median seconds per step (one
forward = one distilled step) after a warm-up. A step streams every block once; the folder is read through the OS
page cache (just written, so it is warm here; a cold read is bounded by the disk).
"""

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..")]

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from ltx_mlx.latents import audio_positions, video_positions  # noqa: E402
from ltx_mlx.models.transformer import Modality  # noqa: E402
from ltx_mlx.weights.components import build  # noqa: E402
from ltx_mlx.weights.convert import CONFIG_NAME, FORMAT, FORMAT_VERSION  # noqa: E402
from ltx_mlx.weights.folder import write_component  # noqa: E402
from ltx_mlx.weights.load import LTXModelBundle  # noqa: E402
from ltx_mlx.weights.stream import block_bytes  # noqa: E402

# LTX-2.3's transformer (config of ltx-2.3-22b-*.safetensors) at `layers` blocks.
ASSERTED = {"dropout": 0.0, "attention_bias": True, "num_vector_embeds": None, "activation_fn": "gelu-approximate",
            "num_embeds_ada_norm": 1000, "use_linear_projection": False, "only_cross_attention": False,
            "cross_attention_norm": True, "double_self_attention": False, "upcast_attention": False,
            "standardization_norm": "rms_norm", "norm_elementwise_affine": False, "qk_norm": "rms_norm",
            "positional_embedding_type": "rope", "use_audio_video_cross_attention": True, "share_ff": False,
            "av_cross_ada_norm": True, "use_middle_indices_grid": True}


def ltx23_config(layers: int) -> dict:
    return dict(ASSERTED, num_attention_heads=32, attention_head_dim=128, audio_num_attention_heads=32,
                audio_attention_head_dim=64, num_layers=layers, in_channels=128, out_channels=128,
                audio_in_channels=128, audio_out_channels=128, cross_attention_dim=4096, audio_cross_attention_dim=2048,
                caption_channels=3840, norm_eps=1e-6, positional_embedding_theta=10000.0,
                positional_embedding_max_pos=[20, 2048, 2048], audio_positional_embedding_max_pos=[20],
                timestep_scale_multiplier=1000, av_ca_timestep_scale_multiplier=1000.0, rope_type="split",
                frequencies_precision="float64", apply_gated_attention=True, cross_attention_adaln=True,
                caption_proj_before_connector=True)


def write_folder(folder: Path, config: dict, dtype: str):
    """A converted folder holding only the transformer, random weights (std 0.02), one block at a time."""
    model = build("transformer", config)
    params = tree_flatten(model.parameters())
    del model
    seed = 0

    def tensors():
        for i, (name, p) in enumerate(params):
            yield name, (mx.random.normal(p.shape, key=mx.random.key(seed + i)) * 0.02).astype(getattr(mx, dtype))

    write_component(folder / "transformer", tensors(), max_shard_bytes=1 << 30)
    (folder / CONFIG_NAME).write_text(json.dumps({
        "format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype, "model_version": "2.3.0",
        "config": {"transformer": config}, "quantization": {},
        "components": {"transformer": {"kind": "transformer", "folder": "transformer", "config": config}}}))


def inputs(video_tokens: int, audio_tokens: int, text_tokens: int, dtype):
    f = 4 if video_tokens % 4 == 0 else 1
    h = max(d for d in range(1, int((video_tokens // f) ** 0.5) + 1) if (video_tokens // f) % d == 0)
    w = video_tokens // f // h
    seed = 1 << 20
    r = lambda i, *shape: mx.random.normal(shape, key=mx.random.key(seed + i)).astype(dtype)  # noqa: E731
    video = Modality(latent=r(0, 1, video_tokens, 128), sigma=mx.array([0.8]),
                     timesteps=mx.full((1, video_tokens), 0.8), positions=video_positions(1, f, h, w, 24.0),
                     context=r(1, 1, text_tokens, 4096))
    audio = Modality(latent=r(2, 1, audio_tokens, 128), sigma=mx.array([0.8]),
                     timesteps=mx.full((1, audio_tokens), 0.8), positions=audio_positions(1, audio_tokens),
                     context=r(3, 1, text_tokens, 2048))
    mx.eval(video.latent, video.context, audio.latent, audio.context)
    return video, audio


def measure(bundle, stream: bool, x, repeats: int) -> dict:
    gc.collect()
    mx.clear_cache()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    start = time.perf_counter()
    model = bundle.load_component("transformer", stream=stream)
    load_s = time.perf_counter() - start
    held = mx.get_active_memory() - before
    mx.eval(model(*x))  # warm-up
    times, peak = [], 0
    for _ in range(repeats):
        gc.collect()
        mx.clear_cache()
        mx.reset_peak_memory()
        start = time.perf_counter()
        mx.eval(model(*x))
        times.append(time.perf_counter() - start)
        peak = max(peak, mx.get_peak_memory() - before)
    del model
    return {"load_s": load_s, "held": held, "peak": peak, "step_s": statistics.median(times)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--video-tokens", type=int, default=256)
    p.add_argument("--audio-tokens", type=int, default=32)
    p.add_argument("--text-tokens", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    gb = 1e9
    with tempfile.TemporaryDirectory(prefix="ltx-low-memory-") as tmp:
        folder = Path(tmp)
        write_folder(folder, ltx23_config(a.layers), a.dtype)
        resident, blocks = block_bytes(folder / "transformer", "transformer")
        bundle = LTXModelBundle(folder)
        x = inputs(a.video_tokens, a.audio_tokens, a.text_tokens, getattr(mx, a.dtype))
        rows = {mode: measure(bundle, mode == "streamed", x, a.repeats) for mode in ("resident", "streamed")}
    print(f"LTX-2.3 transformer, full width, {a.layers} blocks, {a.dtype}, {a.video_tokens} video + {a.audio_tokens} "
          f"audio tokens, {a.text_tokens} text tokens; device {mx.default_device()}; mlx {mx.__version__}")
    print(f"weights from the folder's headers: non-block {resident / gb:.3f} GB, each block {blocks[0] / gb:.3f} GB, "
          f"all {(resident + sum(blocks)) / gb:.3f} GB")
    print(f"{'':28}{'resident':>12}{'streamed':>12}")
    for label, key, unit in (("held after load (GB)", "held", gb), ("peak of one forward (GB)", "peak", gb),
                             ("load (s)", "load_s", 1), ("seconds per step", "step_s", 1)):
        print(f"{label:28}{rows['resident'][key] / unit:>12.3f}{rows['streamed'][key] / unit:>12.3f}")
    drop = rows["resident"]["peak"] - rows["streamed"]["peak"]
    held = sum(sorted(blocks)[-2:])  # the current block and the next one's read
    expected = sum(blocks) - held
    print(f"peak drop {drop / gb:.3f} GB; predicted (all blocks less the two a streamed forward holds) "
          f"{expected / gb:.3f} GB; streamed peak less non-block weights and 2 blocks (activations) "
          f"{(rows['streamed']['peak'] - resident - held) / gb:.3f} GB")
    print(f"streaming costs {rows['streamed']['step_s'] / rows['resident']['step_s']:.2f}x the resident time per step")


if __name__ == "__main__":
    main()
