"""Converting a checkpoint several times larger than the memory we allow stays bounded: a ~400 MB bf16
transformer checkpoint of ~1900 tensors is converted in a fresh process with 32 MB shards; its peak RSS
(resource.getrusage) and MLX's peak allocation must stay far below the file size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch
from safetensors.torch import save_file

from dit_reference import tiny_config
from ltx_mlx.checkpoint import parameter_shapes
from ltx_mlx.model_folder import read_component
from ltx_mlx.models.transformer import LTXModel, TransformerConfig
from reference import save_official_checkpoint

CAP = 100 * 2**20  # the memory we allow the conversion above its start-up footprint
SHARD = 32 * 2**20

# Peak RSS of this process: VmHWM where /proc exists (Linux keeps ru_maxrss across fork+exec, so a child started
# from the big pytest process would report the parent's footprint), getrusage elsewhere (macOS: bytes).
SCRIPT = """
import json, os, resource, sys, time
import mlx.core as mx
from ltx_mlx.convert import ConvertOptions, convert

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
    t = tiny_config("2.3")
    t.update(num_attention_heads=8, attention_head_dim=64, audio_num_attention_heads=4, audio_attention_head_dim=64,
             num_layers=32, caption_channels=512)
    t["cross_attention_dim"], t["audio_cross_attention_dim"] = 512, 256
    shapes = parameter_shapes(LTXModel(TransformerConfig.from_dict(t)))  # lazy: nothing allocated
    g = torch.Generator().manual_seed(0)
    tensors = {"model.diffusion_model." + k: (torch.randn(s, generator=g) * 0.05).bfloat16() for k, s in shapes.items()}
    save_official_checkpoint(path, tensors, {"transformer": t}, "2.3.0")
    return tensors, len(tensors)


def test_conversion_memory_stays_bounded(tmp_path):
    ckpt = tmp_path / "big.safetensors"
    tensors, count = big_checkpoint(ckpt)
    size = ckpt.stat().st_size
    assert size > 3.5 * CAP and count > 1500
    probes = {k[len("model.diffusion_model."):]: tensors[k] for k in list(tensors)[:: count // 5]}
    del tensors
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
        assert np.array_equal(np.array(back[k].astype(mx.float32)), v.float().numpy()), k
