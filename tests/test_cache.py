"""The conversion cache key: by content, not by path (hub-cache files by repo/path/blob id), and --list/--clear-cache."""

import os
import shutil

from ltx_mlx.cli.generate import main as generate
from ltx_mlx.weights.load import fingerprint, identity


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


def test_copied_touched_checkpoint_reuses_the_conversion_changed_byte_does_not(tmp_path, monkeypatch, capsys):
    import ltx_mlx
    import ltx_mlx.weights.load as load_module
    from convert_fixtures import write_official

    (tmp_path / "src").mkdir()
    ckpt, gemma, _ = write_official(tmp_path / "src", "2")
    monkeypatch.setenv("LTX_MLX_CACHE", str(tmp_path / "cache"))
    model = ltx_mlx.load(ckpt, gemma_root=gemma, dtype="float32", progress=False)
    copy = tmp_path / "elsewhere" / os.path.basename(ckpt)
    copy.parent.mkdir()
    shutil.copy(ckpt, copy)
    os.utime(copy, ns=(1, 1))
    calls = []
    real = load_module.convert
    monkeypatch.setattr(load_module, "convert", lambda *a, **k: (calls.append(a), real(*a, **k)))
    assert ltx_mlx.load(str(copy), gemma_root=gemma, dtype="float32", progress=False).folder == model.folder
    assert calls == []
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1  # one tensor byte
    copy.write_bytes(data)
    assert ltx_mlx.load(str(copy), gemma_root=gemma, dtype="float32", progress=False).folder != model.folder
    assert len(calls) == 1
    assert generate(["--list-cache"]) == 0
    out = capsys.readouterr().out
    assert str(model.folder) in out and "from " + os.path.basename(ckpt) in out and "2 entries" in out
    assert generate(["--clear-cache"]) == 0
    assert "removed " + str(model.folder) in capsys.readouterr().out and not any((tmp_path / "cache").iterdir())
