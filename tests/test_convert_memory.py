"""The converter's memory at the default shard size, scaled down: the README's sentence on converting a 46 GB
checkpoint rests on this test.

The real LTX-2.3 22B file is 46.149 GB and converts into 5 GiB shards (`MAX_SHARD_BYTES`): 8.6 shards. Its largest
tensor is the text projection's video aggregate weight, 1.54 GB (0.29 shards). Here both are divided by SCALE
(160): a 2.3-shaped checkpoint (transformer + text projection) of 279 MiB whose largest tensor is 9 MiB, converted
with 32 MiB shards in a fresh process, bf16 as it is and with 8-bit quantization.

Measured (Linux, mlx 0.32.4 CPU, 32 MiB shards; 16 and 64 MiB shards give the same within 0.4 shards):
  MLX peak (mx.get_peak_memory)           1.02-1.06 shards
  process RSS above its start-up (44 MB)  2.1-2.5 shards
The RSS is higher than MLX's arrays because glibc keeps the freed buffers of written shards in its heap (after
the conversion, malloc_trim(0) gives back all but ~16 MB of it); allocators that return memory do better.
"""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from dit_reference import tiny_config
from ltx_mlx.models.text_projection import PREFIXES, route_key
from ltx_mlx.weights.checkpoint import parameter_shapes
from ltx_mlx.weights.components import build
from ltx_mlx.weights.folder import MAX_SHARD_BYTES, read_component

REAL_CHECKPOINT = 46.149e9
REAL_LARGEST = 4096 * 188160 * 2  # text_embedding_projection.video_aggregate_embed.weight, bf16
SCALE = 160
SHARD = MAX_SHARD_BYTES // SCALE  # 32 MiB
MLX_SHARDS = 1.15  # measured 1.02-1.06
RSS_SHARDS = 2.75  # measured 2.1-2.5

# Peak RSS of this process: VmHWM where /proc exists (Linux keeps ru_maxrss across fork+exec, so a child started
# from the big pytest process would report the parent's footprint), getrusage elsewhere (macOS: bytes).
SCRIPT = """
import json, os, resource, sys, time
import mlx.core as mx
from ltx_mlx.weights.convert import ConvertOptions, convert, quantization_plans

def peak_rss():
    if os.path.exists("/proc/self/status"):
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

start = peak_rss()
t = time.time()
plans = quantization_plans(8) if sys.argv[4] == "q8" else {}
convert(sys.argv[1], sys.argv[2], options=ConvertOptions(dtype="bfloat16", quantize=plans, progress=False,
                                                         max_shard_bytes=int(sys.argv[3])))
print(json.dumps({"start": start, "peak": peak_rss(), "mlx_peak": mx.get_peak_memory(), "seconds": time.time() - t}))
"""


def scaled_config(num_layers: int) -> dict:
    t = tiny_config("2.3")
    t.update(num_attention_heads=8, attention_head_dim=64, audio_num_attention_heads=4, audio_attention_head_dim=64,
             num_layers=num_layers, caption_channels=512, cross_attention_dim=512, audio_cross_attention_dim=256,
             connector_num_layers=1, connector_num_attention_heads=8, connector_attention_head_dim=64,
             audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=64,
             connector_apply_gated_attention=True, connector_positional_embedding_max_pos=[4096],
             connector_num_learnable_registers=128)
    return t


def official_shapes(t: dict, num_states: int) -> dict[str, tuple]:
    """Official key -> shape of the transformer and the text projection (built lazily: nothing allocated)."""
    shapes = {"model.diffusion_model." + k: s for k, s in parameter_shapes(build("transformer", t)).items()}
    projection = build("text_projection", {"transformer": t, "embedding_dim": t["caption_channels"],
                                           "num_states": num_states, "registers": [128, 128]})
    for k, s in parameter_shapes(projection).items():
        head, rest = k.split(".", 1)
        shapes[PREFIXES[head + "."] + rest] = s
    return shapes


def scaled_checkpoint(path: Path) -> tuple[dict, int, int]:
    """The real checkpoint divided by SCALE, in bf16, written tensor by tensor from one pool of random values.

    Returns a few tensors (float32 numpy, by official key) to check after conversion, the tensor count and
    the largest tensor's bytes."""
    states = round(REAL_LARGEST / SCALE / (2 * 512 * 512))  # the video aggregate weight is (512, 512 x states)
    layers = next(n for n in range(1, 100)
                  if sum(2 * np.prod(s) for s in official_shapes(scaled_config(n), states).values())
                  >= REAL_CHECKPOINT / SCALE)
    t = scaled_config(layers)
    shapes = official_shapes(t, states)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 22, dtype=np.float32) * 0.05).view(np.uint32) >> 16
    pool = np.concatenate([pool, pool]).astype(np.uint16)
    header, offset, layout = {}, 0, []
    for i, (key, shape) in enumerate(shapes.items()):
        n = int(np.prod(shape))
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + 2 * n]}
        layout.append((key, shape, (i * 7919) % (1 << 22), n))
        offset += 2 * n
    header["__metadata__"] = {"config": json.dumps({"transformer": t}), "model_version": "2.3.0"}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    probes = {}
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for i, (key, shape, start, n) in enumerate(layout):
            data = np.resize(pool[start:], n) if n > len(pool) - start else pool[start:start + n]
            f.write(data.tobytes())
            if i % (len(layout) // 5) == 0 or key.endswith("video_aggregate_embed.weight"):
                probes[key] = (data.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return probes, len(layout), max(2 * int(np.prod(s)) for s in shapes.values())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("memory") / "ltx-2.3-scaled.safetensors"
    return (path, *scaled_checkpoint(path))


@pytest.mark.parametrize("how", ["bf16", "q8"])
def test_conversion_peak_is_about_one_shard(checkpoint, tmp_path, how):
    ckpt, probes, count, largest = checkpoint
    size = ckpt.stat().st_size
    assert abs(size / SHARD - REAL_CHECKPOINT / MAX_SHARD_BYTES) < 0.2  # 8.6 shards, as the real file
    assert abs(largest / SHARD - REAL_LARGEST / MAX_SHARD_BYTES) < 0.02  # its largest tensor: 0.29 shards
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ckpt), str(out), str(SHARD), how],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = m["peak"] - m["start"]
    print(f"{how}: converted {size / 2**20:.0f} MB ({count} tensors, {size / SHARD:.2f} shards of {SHARD / 2**20:.0f} "
          f"MiB, largest tensor {largest / SHARD:.2f} shards) in {m['seconds']:.1f} s: peak RSS "
          f"{m['peak'] / 2**20:.0f} MB = start-up {m['start'] / 2**20:.0f} MB + {grown / 2**20:.0f} MB "
          f"({grown / SHARD:.2f} shards); MLX peak {m['mlx_peak'] / 2**20:.0f} MB ({m['mlx_peak'] / SHARD:.2f} shards)")
    assert m["mlx_peak"] <= MLX_SHARDS * SHARD
    assert grown <= RSS_SHARDS * SHARD
    shards = sorted((out / "transformer").glob("*.safetensors"))
    written = sum(s.stat().st_size for s in shards)
    assert len(shards) >= written // SHARD and all(s.stat().st_size <= SHARD + 2**20 for s in shards)
    if how == "bf16":
        back = {**read_component(out / "transformer"), **read_component(out / "text_projection")}
        assert len(back) == count
        for key, v in probes.items():
            ours = route_key(key) or key.removeprefix("model.diffusion_model.")
            assert back[ours].dtype == mx.bfloat16
            assert np.array_equal(np.array(back[ours].astype(mx.float32)), v), key
