"""The conversion cache key: by content, not by path (hub-cache files by repo/path/blob id), and --list/--clear-cache."""

import os
import shutil

from ltx_mlx.cli.generate import main as generate
from ltx_mlx.weights.hub import fingerprint, identity


def test_copied_file_same_identity_changed_header_or_sample_differs(tmp_path):
    a = tmp_path / "a.safetensors"
    a.write_bytes((16).to_bytes(8, "little") + b'{"x":1}'.ljust(16) + bytes(20 << 20))
    b = tmp_path / "moved" / "b.safetensors"
    b.parent.mkdir()
    shutil.copy(a, b)
    assert identity(a) == identity(b)
    data = bytearray(a.read_bytes())
    data[10] ^= 1  # header byte
    b.write_bytes(data)
    assert fingerprint(a) != fingerprint(b)


def test_moved_hf_home_and_new_commit_same_identity(tmp_path):
    for home, commit in (("hf1", "a" * 40), ("hf2", "b" * 40)):
        repo = tmp_path / home / "hub" / "models--owner--repo"
        (repo / "blobs").mkdir(parents=True)
        (repo / "blobs" / "sha256blob").write_bytes(b"w")
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        os.symlink("../../blobs/sha256blob", snap / "m.safetensors")
    ids = [identity(tmp_path / h / "hub/models--owner--repo/snapshots" / c / "m.safetensors")
           for h, c in (("hf1", "a" * 40), ("hf2", "b" * 40))]
    assert ids[0] == ids[1] == ["hub", "owner/repo", "m.safetensors", "sha256blob"]


def test_list_and_clear_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LTX_MLX_CACHE", str(tmp_path))
    (tmp_path / "m-float32-x").mkdir()
    (tmp_path / "m-float32-x" / "config.json").write_bytes(bytes(1000))
    assert generate(["--list-cache"]) == 0 and "1 entries" in capsys.readouterr().out
    assert generate(["--clear-cache"]) == 0 and "removed" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())
