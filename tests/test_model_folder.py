"""Sharded component writing/reading, atomic output folders, free-space checks, local/hub path resolution."""

import json

import mlx.core as mx
import numpy as np
import pytest

from ltx_mlx.weights.checkpoint import CheckpointError
from ltx_mlx.weights.folder import (INDEX_NAME, atomic_output_dir, ensure_free_space, read_component, resolve_path,
                                  write_component)


def test_sharded_round_trip(tmp_path):
    tensors = {f"blocks.{i}.w": mx.random.normal((64, 16)) for i in range(10)}
    tensors["q.scales"] = mx.ones((4, 2), dtype=mx.bfloat16)
    index = write_component(tmp_path / "dit", tensors.items(), max_shard_bytes=3 * 64 * 16 * 4)
    shards = sorted(p.name for p in (tmp_path / "dit").glob("*.safetensors"))
    assert len(shards) == 4 and shards[0] == "model-00001-of-00004.safetensors"
    assert set(index["weight_map"]) == set(tensors)
    back = read_component(tmp_path / "dit")
    assert set(back) == set(tensors) and back["q.scales"].dtype == mx.bfloat16
    for k, v in tensors.items():
        np.testing.assert_array_equal(np.array(back[k].astype(mx.float32)), np.array(v.astype(mx.float32)))
    assert json.loads((tmp_path / "dit" / INDEX_NAME).read_text())["metadata"] == {"format": "mlx"}

    (tmp_path / "dit" / shards[1]).unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        read_component(tmp_path / "dit")
    with pytest.raises(CheckpointError, match="not a converted"):
        read_component(tmp_path)


def test_atomic_output_dir(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing that looks complete is left
    with atomic_output_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (out / "config.json").is_file()
    with pytest.raises(FileExistsError, match="--force"):
        with atomic_output_dir(out):
            pass
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "new.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["new.json"]


def test_free_space_and_paths(tmp_path):
    ensure_free_space(tmp_path / "a" / "b", 1)
    with pytest.raises(OSError, match="not enough disk space"):
        ensure_free_space(tmp_path, 1 << 60)
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"")
    assert resolve_path(str(f)) == str(f)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_path(str(tmp_path / "missing.safetensors"))
