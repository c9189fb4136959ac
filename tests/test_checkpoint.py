"""The official-checkpoint reader: dtypes (bf16, fp8 with and without scales), metadata, strict loads, bad files."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ltx_mlx.weights.checkpoint import CheckpointError, SafetensorsFile, load_strict, official_tensor
from ltx_mlx.weights.convert import read_checkpoint


def test_dtypes_decode_like_torch(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(7, 5, generator=g) * 30
    all_fp8 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
    all_e5m2 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e5m2)
    tensors = {"f32": base, "f16": base.half(), "bf16": base.bfloat16(), "e4m3": all_fp8, "e5m2": all_e5m2,
               "i64": torch.arange(6).reshape(2, 3)}
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path))
    sf = SafetensorsFile(path)
    assert sf.dtype("bf16") == "BF16" and sf.dtype("e4m3") == "F8_E4M3"
    for k, t in tensors.items():
        ours = np.array(sf.get(k).astype(mx.float32) if k != "i64" else sf.get(k))
        ref = t.float().numpy() if k != "i64" else t.numpy()
        np.testing.assert_array_equal(ours, ref, err_msg=k)  # exact, NaNs included
    assert sf.get("bf16").dtype == mx.bfloat16


def test_fp8_weight_scales_are_folded(tmp_path):
    w = (torch.randn(4, 3) * 2).to(torch.float8_e4m3fn)
    scale = torch.tensor(0.37)
    save_file({"m.a.weight": w, "m.a.weight_scale": scale, "m.a.input_scale": torch.tensor(1.5),
               "m.a.bias": torch.ones(4), "other.weight": torch.ones(2)}, str(tmp_path / "q.safetensors"))
    sf = SafetensorsFile(tmp_path / "q.safetensors")
    got = official_tensor(sf, "m.a.weight", mx.float32)
    np.testing.assert_allclose(np.array(got), w.float().numpy() * 0.37, rtol=1e-6)
    np.testing.assert_array_equal(np.array(official_tensor(sf, "m.a.bias", mx.float32)), np.ones(4))


def test_metadata_and_bad_files(tmp_path):
    ok = tmp_path / "ok.safetensors"
    save_file({"a": torch.zeros(3)}, str(ok), metadata={"config": json.dumps({"transformer": {"x": 1}}),
                                                       "model_version": "2.3.0"})
    assert read_checkpoint(str(ok))[1:] == ({"transformer": {"x": 1}}, "2.3.0")

    bare = tmp_path / "bare.safetensors"
    save_file({"a": torch.zeros(3)}, str(bare))
    with pytest.raises(CheckpointError, match="no metadata 'config'"):
        read_checkpoint(str(bare))
    with pytest.raises(CheckpointError, match="not found"):
        SafetensorsFile(tmp_path / "missing.safetensors")

    data = ok.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-4])
    with pytest.raises(CheckpointError, match="truncated"):
        SafetensorsFile(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        SafetensorsFile(tmp_path / "junk.safetensors")


def test_load_strict_names_the_keys():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    good = {"layers.0.weight": mx.ones((4, 3)), "layers.0.bias": mx.ones((4,)),
            "layers.1.weight": mx.ones((2, 4)), "layers.1.bias": mx.ones((2,))}
    load_strict(model, dict(good), "toy")
    assert float(model.layers[1].weight.sum()) == 8.0
    bad = dict(good)
    del bad["layers.1.bias"]
    bad["layers.9.weight"] = mx.ones((1,))
    bad["layers.0.weight"] = mx.ones((3, 4))
    with pytest.raises(CheckpointError) as e:
        load_strict(model, bad, "toy")
    msg = str(e.value)
    assert "layers.1.bias" in msg and "layers.9.weight" in msg and "layers.0.weight (model (4, 3), file (3, 4))" in msg
