"""The converted MLX model folder on disk: sharded safetensors per component, atomic writes, hub paths.

Layout of a converted folder:
    config.json                       model version, every component's config, dtype, quantization
    <component>/model-00001-of-0000N.safetensors   (≤ 5 GB each, metadata {"format": "mlx"})
    <component>/model.safetensors.index.json       weight name → shard file
    tokenizer files (in gemma/)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import mlx.core as mx

from .checkpoint import CheckpointError

MAX_SHARD_BYTES = 5 * 1024**3
INDEX_NAME = "model.safetensors.index.json"


def write_component(folder: str | os.PathLike, tensors: Iterable[tuple[str, mx.array]],
                    max_shard_bytes: int = MAX_SHARD_BYTES) -> dict:
    """Write (name, array) pairs as ≤ max_shard_bytes shards plus an index; arrays are evaluated one shard at a time."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    current: dict[str, mx.array] = {}
    size = 0
    written = []

    def flush():
        nonlocal current, size
        if current:
            name = f"part-{len(written):05d}.safetensors"
            mx.save_safetensors(str(folder / name), current, metadata={"format": "mlx"})
            written.append((name, list(current)))
            current, size = {}, 0

    for key, value in tensors:
        nbytes = value.nbytes
        if current and size + nbytes > max_shard_bytes:
            flush()
        current[key] = value
        size += nbytes
    flush()
    total = len(written)
    weight_map = {}
    for i, (tmp_name, keys) in enumerate(written):
        final = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        os.replace(folder / tmp_name, folder / final)
        weight_map.update({k: final for k in keys})
    index = {"metadata": {"format": "mlx"}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=1))
    return index


def read_component(folder: str | os.PathLike) -> dict[str, mx.array]:
    """Every tensor of one converted component (as written by `write_component`)."""
    folder = Path(folder)
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        raise CheckpointError(f"{folder} is not a converted ltx-mlx component (no {INDEX_NAME}); "
                              "convert the model again with convert.py")
    weight_map = json.loads(index_path.read_text())["weight_map"]
    out = {}
    for shard in sorted(set(weight_map.values())):
        path = folder / shard
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the converted folder is incomplete; convert again")
        out.update(mx.load(str(path)))
    missing = set(weight_map) - set(out)
    if missing:
        raise CheckpointError(f"{folder}: the shards lack {sorted(missing)[:5]}; the folder is corrupt, convert again")
    return out


@contextlib.contextmanager
def atomic_output_dir(final: str | os.PathLike, force: bool = False):
    """Yield a temporary folder beside `final`; it becomes `final` only if the block completes."""
    final = Path(final)
    if final.exists() and not force:
        raise FileExistsError(f"{final} already exists; choose another output path or pass --force to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def ensure_free_space(folder: str | os.PathLike, needed_bytes: int):
    """Fail up front, before any work, when the disk cannot hold the output."""
    folder = Path(folder)
    probe = folder if folder.exists() else folder.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise OSError(f"not enough disk space at {probe}: the output needs about {needed_bytes / 1e9:.1f} GB, "
                      f"{free / 1e9:.1f} GB are free")


def resolve_path(path_or_repo: str, filename: str | None = None) -> str:
    """A local file/folder as is, else a Hugging Face repo id (`owner/name` or `owner/name/file`) from the hub cache."""
    if os.path.exists(path_or_repo):
        return path_or_repo
    parts = path_or_repo.split("/")
    if len(parts) < 2 or path_or_repo.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{path_or_repo} does not exist (and is not a Hugging Face repo id like owner/name)")
    repo_id, in_repo = "/".join(parts[:2]), "/".join(parts[2:]) or filename
    from huggingface_hub import hf_hub_download, snapshot_download
    try:
        if in_repo:
            return hf_hub_download(repo_id, in_repo)
        return snapshot_download(repo_id)
    except Exception as e:  # network, auth, missing repo: say which input failed and why
        raise FileNotFoundError(f"could not fetch {path_or_repo} from the Hugging Face hub: {e}") from None
