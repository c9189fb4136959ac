"""The converted MLX model folder on disk: sharded safetensors per component, atomic writes, hub paths.

Layout of a converted folder:
    config.json                       model version, every component's config, dtype, quantization
    <component>/model-00001-of-0000N.safetensors   (≤ 5 GB each, metadata {"format": "mlx"})
    <component>/model.safetensors.index.json       weight name → shard file
    tokenizer files (in gemma/)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import mlx.core as mx

from .checkpoint import CheckpointError, SafetensorsFile

MAX_SHARD_BYTES = 5 * 1024**3
INDEX_NAME = "model.safetensors.index.json"


def _save_shard(path: Path, tensors: dict[str, mx.array]):
    try:
        mx.save_safetensors(str(path), tensors, metadata={"format": "mlx"})
    except RuntimeError as e:  # MLX reports a full disk as "[write] Unable to write N bytes to file."
        nbytes = sum(v.nbytes for v in tensors.values())
        if shutil.disk_usage(path.parent).free < nbytes + (16 << 20):
            raise OSError(errno.ENOSPC, f"No space left on device writing {path}") from None
        raise OSError(f"cannot write {path}: {e}") from None


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
            _save_shard(folder / name, current)
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


def read_index(folder: str | os.PathLike) -> dict[str, str]:
    """The weight map (name → shard) of one converted component, with every shard it names present."""
    folder = Path(folder)
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        raise CheckpointError(f"{folder} is not a converted ltx-mlx component (no {INDEX_NAME}); "
                              "convert the model again with convert.py")
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not a name → shard mapping")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path} is empty or corrupt ({type(e).__name__}: {e}); the converted folder is "
                              "damaged: convert the model again") from None
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).is_file():
            raise CheckpointError(f"{folder / shard} is missing: the converted folder is incomplete; convert again")
    return weight_map


def read_component(folder: str | os.PathLike) -> dict[str, mx.array]:
    """Every tensor of one converted component (as written by `write_component`)."""
    folder = Path(folder)
    weight_map = read_index(folder)
    out = {}
    for shard in sorted(set(weight_map.values())):
        path = folder / shard
        SafetensorsFile(path, converted=True)  # a truncated or corrupt shard is named here, not by mx.load
        try:
            out.update(mx.load(str(path)))
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} cannot be read ({e}); the converted folder is damaged: convert the model "
                                  "again") from None
    missing = set(weight_map) - set(out)
    if missing:
        raise CheckpointError(f"{folder}: the shards lack {sorted(missing)[:5]}; the folder is corrupt, convert again")
    return out


def _owner_alive(leftover: Path) -> bool:
    """Whether the process that named a `.partial-<pid>` / `.old-<pid>` folder is still running."""
    try:
        os.kill(int(leftover.name.rsplit("-", 1)[1]), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


def remove_leftovers(final: str | os.PathLike):
    """Remove the temporary folders of earlier writes to `final` whose process has died (killed, crashed)."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    for p in final.parent.iterdir():  # not glob: a name may hold glob's special characters
        if p.name.rsplit("-", 1)[0] in (f".{final.name}.partial", f".{final.name}.old") and not _owner_alive(p):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(final: str | os.PathLike, force: bool = False):
    """Yield a temporary folder beside `final`; it becomes `final` only if the block completes.

    Whatever interrupts the block (an exception, Ctrl-C, a full disk) removes the temporary folder; a run that was
    killed outright leaves it behind, and the next write to `final` removes it. An existing `final` is moved
    aside before the new one takes its name, so `final` is at every instant either the old folder or the new one."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} is a file, not a model folder; choose another output path "
                              "(--force replaces only a folder)")
    if final.exists() and not force:
        raise FileExistsError(f"{final} already exists; choose another output path or pass --force to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        yield tmp
        if final.exists():
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old.exists() and not final.exists():
                os.replace(old, final)  # put the previous folder back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


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
