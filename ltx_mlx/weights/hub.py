"""What a conversion read, independent of where it lies: the conversion cache's key material.

A file in the Hugging Face hub cache (`…/models--owner--name/snapshots/<commit>/<path>`, a link to
`blobs/<id>`) is known by repo id + path + blob id (the LFS sha256, or the git blob id of a small file): a new
upstream commit that leaves the file alone, or a moved HF_HOME, gives the same identity.
Any other file is known by a content fingerprint (`fingerprint`), never by its path or mtime.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
from pathlib import Path

_SNAPSHOT = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/[^/]+/(?P<path>.+)$")
_SAMPLES, _BLOCK, _WHOLE = 64, 4096, 16 << 20
# The files of a Gemma folder that a conversion reads (a README or .gitattributes change is no new model).
_FOLDER_FILES = re.compile(r"(config\.json|.*\.safetensors|model\.safetensors\.index\.json|tokenizer.*|"
                           r"special_tokens_map\.json|added_tokens\.json|preprocessor_config\.json|"
                           r"processor_config\.json|chat_template\.json(?:l)?|chat_template\.jinja|"
                           r"generation_config\.json)$")


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 over the size, the safetensors header (names, dtypes, shapes, offsets, metadata) — or the whole file
    when it is under 16 MiB — and 64 blocks of 4 KiB spread evenly over the file (≈ 256 KiB read).

    It detects: any change of size, header, config or metadata, and any change inside a sampled block (a retrained
    or fine-tuned checkpoint differs in every block). It does NOT detect an edit of a few tensor bytes between the
    sampled blocks with the size and header unchanged."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        if size <= _WHOLE:
            h.update(f.read())
            return h.hexdigest()
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        h.update(head + f.read(min(n, 100_000_000)))
        for i in range(_SAMPLES):
            f.seek(i * (size - _BLOCK) // (_SAMPLES - 1))
            h.update(f.read(_BLOCK))
    return h.hexdigest()


def file_identity(path: str | os.PathLike) -> list:
    """["hub", repo id, path in repo, blob id] for a hub-cache file, else ["local", fingerprint]."""
    p = Path(path)
    m = _SNAPSHOT.search(p.as_posix())
    if m and p.is_symlink():
        return ["hub", f"{m['owner']}/{m['name']}", m["path"], os.path.basename(os.readlink(p))]
    return ["local", fingerprint(p)]


def identity(path: str | os.PathLike) -> list:
    """The identity of a file, or of a folder's convertible files (by name relative to the folder)."""
    p = Path(path)
    if not p.is_dir():
        return file_identity(p)
    files = sorted(f for f in p.rglob("*") if f.is_file() and _FOLDER_FILES.match(f.name)
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    return [[f.relative_to(p).as_posix(), file_identity(f)] for f in files]


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def list_cache(root: str | os.PathLike) -> list[tuple[str, int, bool]]:
    """(name, bytes, complete) of every entry of the conversion cache (leftovers of killed runs included)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [(p.name, _size(p), (p / "config.json").is_file()) for p in sorted(root.iterdir()) if p.is_dir()]


def clear_cache(root: str | os.PathLike) -> list[tuple[str, int, bool]]:
    """Remove every entry of the conversion cache; returns what was removed."""
    removed = list_cache(root)
    for name, _, _ in removed:
        shutil.rmtree(Path(root) / name)
    return removed
