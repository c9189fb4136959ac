"""Converting a checkpoint several times larger than the memory we allow stays bounded: a ~400 MB bf16
transformer checkpoint of 2810 tensors is converted in a fresh process with 32 MB shards; its peak RSS
(resource.getrusage) and MLX's peak allocation must stay far below the file size."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np

from dit_reference import tiny_config
from ltx_mlx.weights.checkpoint import parameter_shapes
from ltx_mlx.weights.folder import read_component
from ltx_mlx.models.transformer import LTXModel, TransformerConfig

CAP = 100 * 2**20  # the memory we allow the conversion above its start-up footprint
SHARD = 32 * 2**20

# Peak RSS of this process: VmHWM where /proc exists (Linux keeps ru_maxrss across fork+exec, so a child started
# from the big pytest process would report the parent's footprint), getrusage elsewhere (macOS: bytes).
SCRIPT = """
import json, os, resource, sys, time
import mlx.core as mx
from ltx_mlx.weights.convert import ConvertOptions, convert

def peak_rss():
    if os.path.exists("/proc/self/status"):
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

start = peak_rss()
t = time.time()
convert(sys.argv[1], sys.argv[2], options=ConvertOptions(dtype="bfloat16", progress=False, max_shard_bytes=int(sys.argv[3])))
print(json.dumps({"start": start, "peak": peak_rss(), "mlx_peak": mx.get_peak_memory(), "seconds": time.time() - t}))
"""


def big_checkpoint(path: Path) -> tuple[dict, int]:
    """A ~385 MB bf16 LTX-2.3-shaped transformer checkpoint (32 wide-ish blocks), written tensor by tensor.

    Each tensor is a slice of one random pool of finite bf16 values at its own offset. Returns a few tensors
    (as float32 numpy, by our name) to check after conversion, and the tensor count."""
    t = tiny_config("2.3")
    t.update(num_attention_heads=8, attention_head_dim=64, audio_num_attention_heads=4, audio_attention_head_dim=64,
             num_layers=32, caption_channels=512)
    t["cross_attention_dim"], t["audio_cross_attention_dim"] = 512, 256
    shapes = parameter_shapes(LTXModel(TransformerConfig.from_dict(t)))  # lazy: nothing allocated
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 22, dtype=np.float32) * 0.05).view(np.uint32) >> 16
    pool = np.concatenate([pool, pool]).astype(np.uint16)
    header, offset, layout = {}, 0, []
    for i, (key, shape) in enumerate(shapes.items()):
        n = int(np.prod(shape))
        start = (i * 7919) % (1 << 22)
        header["model.diffusion_model." + key] = {"dtype": "BF16", "shape": list(shape),
                                                  "data_offsets": [offset, offset + 2 * n]}
        layout.append((key, shape, start, n))
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
            if i % (len(layout) // 5) == 0:
                probes[key] = (data.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return probes, len(layout)


def test_conversion_memory_stays_bounded(tmp_path):
    ckpt = tmp_path / "big.safetensors"
    probes, count = big_checkpoint(ckpt)
    size = ckpt.stat().st_size
    assert size > 3.5 * CAP and count > 1500 and len(probes) >= 5
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ckpt), str(tmp_path / "out"), str(SHARD)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    grown = m["peak"] - m["start"]
    print(f"converted {size / 2**20:.0f} MB ({count} tensors) in {m['seconds']:.1f} s: peak RSS {m['peak'] / 2**20:.0f} MB "
          f"(+{grown / 2**20:.0f} MB over the {m['start'] / 2**20:.0f} MB start-up), MLX peak {m['mlx_peak'] / 2**20:.0f} MB")
    assert grown < CAP and m["mlx_peak"] < CAP
    shards = sorted((tmp_path / "out" / "transformer").glob("*.safetensors"))
    assert len(shards) >= size // SHARD and all(s.stat().st_size <= SHARD + 2**20 for s in shards)
    back = read_component(tmp_path / "out" / "transformer")
    assert len(back) == count
    for k, v in probes.items():
        assert back[k].dtype == mx.bfloat16
        assert np.array_equal(np.array(back[k].astype(mx.float32)), v), k
