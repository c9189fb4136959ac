"""convert.py round trips: tiny official LTX-2 / LTX-2.3 files (every component, built from the live reference) →
CLI → `ltx_mlx.load` → each component's outputs equal those of the same component loaded straight from the
official file (float32: exactly). Also: the folder's config/shards/tokenizer, fp8 inputs, and every bad input."""

import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from safetensors.torch import load_file, save_file

import ltx_mlx
from convert_fixtures import (UPSAMPLERS, VERSIONS, assert_clean_failure, component_outputs, official_tensors, run_cli,
                              upsampler_args, write_official, write_upsamplers)
from ltx_mlx.weights.checkpoint import CheckpointError, SafetensorsFile
from ltx_mlx.cli.convert import main
from ltx_mlx.weights.folder import INDEX_NAME
from ltx_mlx.weights.tokenizer import PromptTokenizer
from reference import save_official_checkpoint
from loading import load_gemma, load_official, load_upsampler

COMPONENTS = ("transformer", "text_projection", "video_encoder", "video_decoder", "audio_encoder", "audio_decoder",
              "vocoder", "gemma")


def official_component(name, ckpt, gemma, upsamplers=None):
    """The component as the official files give it, converted on its own (float32, no quantization)."""
    if "upsampler" in name:
        return load_upsampler(upsamplers[name][1])
    if name == "gemma":
        return load_gemma(gemma)
    return load_official(ckpt, name, gemma=gemma if name == "text_projection" else None)


@pytest.fixture(scope="module", params=list(VERSIONS))
def official(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"ltx{request.param}")
    ckpt, gemma, config = write_official(tmp, request.param)
    return request.param, tmp, ckpt, gemma, config


@pytest.fixture(scope="module")
def converted(official):
    version, tmp, ckpt, gemma, config = official
    upsamplers = write_upsamplers(tmp, version)
    out = tmp / "mlx-f32"
    rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", out, "--dtype", "float32",
                      *upsampler_args(upsamplers))
    assert rc == 0, err
    return out, upsamplers


def test_round_trip_outputs_equal_official(official, converted):
    version, tmp, ckpt, gemma, config = official
    converted, upsamplers = converted
    bundle = ltx_mlx.load(converted)
    assert bundle.components == list(COMPONENTS) + list(UPSAMPLERS[version])
    assert bundle.model_version == VERSIONS[version]
    for name in bundle.components:
        ours, ref = bundle.get(name), official_component(name, ckpt, gemma, upsamplers)
        assert type(ours) is type(ref), name
        ref_params, our_params = dict(tree_flatten(ref.parameters())), dict(tree_flatten(ours.parameters()))
        assert set(ours_keys := our_params) == set(ref_params), name
        for k in ours_keys:  # stored in the model's own layout: loading only reads, never transposes
            assert our_params[k].dtype == mx.float32
            np.testing.assert_array_equal(np.array(our_params[k]), np.array(ref_params[k]), err_msg=f"{name}.{k}")
        got, expected = component_outputs(name, ours, config), component_outputs(name, ref, config)
        assert len(got) == len(expected) > 0
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            np.testing.assert_array_equal(np.array(g), np.array(e), err_msg=name)
        print(f"LTX-{version} {name}: {len(got)} outputs identical to the official-file load")
        bundle.free(name)
    assert bundle._loaded == {}


def test_folder_layout_config_and_tokenizer(official, converted):
    version, tmp, ckpt, gemma, config = official
    converted, upsamplers = converted
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["format"] == "mlx" and cfg["model_version"] == VERSIONS[version] and cfg["dtype"] == "float32"
    assert cfg["config"] == config  # every official section, verbatim
    assert cfg["quantization"] == {} and cfg["fused_loras"] == []
    stored = cfg["components"]["text_projection"]["config"]
    assert (stored["embedding_dim"], stored["num_states"], stored["registers"]) == (64, 8, [128, 128])
    assert cfg["components"]["transformer"]["config"] == cfg["config"]["transformer"]
    assert cfg["format_version"] == 2
    assert cfg["source"] == {"checkpoint": ckpt.name, "bytes": ckpt.stat().st_size}
    for name, (kind, path) in upsamplers.items():
        entry = cfg["components"][name]
        assert entry == {"kind": f"{kind}_upsampler", "folder": name, "config": SafetensorsFile(path).config(),
                         "source": path.name}
    bundle = ltx_mlx.load(converted)
    assert bundle.spatial_upsampler("spatial_upsampler_x2") is bundle.get("spatial_upsampler_x2")
    if version == "2.3":
        assert bundle.upsamplers("spatial_upsampler") == ["spatial_upsampler_x2", "spatial_upsampler_x1.5"]
        assert bundle.temporal_upsampler().cfg.temporal_upsample
    else:
        assert bundle.spatial_upsampler() is bundle.get("spatial_upsampler_x2")
    for name in cfg["components"]:
        index = json.loads((converted / name / INDEX_NAME).read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert shards and all(SafetensorsFile(converted / name / s).metadata == {"format": "mlx"} for s in shards)
    # nothing but the finished folder next to it (no temporary leftovers)
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".")) == []
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (converted / "gemma" / f).read_bytes() == (gemma / f).read_bytes()
    assert json.loads((converted / "gemma" / "config.json").read_text())["text_config"]["hidden_size"] == 64
    prompt = "a cat walks on the beach at sunset"
    ids, mask = ltx_mlx.load(converted).tokenizer(max_length=16)(prompt)
    ref_ids, ref_mask = PromptTokenizer(gemma, 16)(prompt)
    assert np.array_equal(np.array(ids), np.array(ref_ids)) and np.array_equal(np.array(mask), np.array(ref_mask))
    # the converted gemma/ is itself a loadable Gemma folder
    assert load_gemma(converted / "gemma").config.num_hidden_layers == 7


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_conversion_matches_official_load(official, tmp_path, dtype):
    version, tmp, ckpt, gemma, config = official
    args = [] if dtype == "bfloat16" else ["--dtype", dtype]  # bfloat16 is the default
    rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", tmp_path / dtype, *args)
    assert rc == 0, err
    bundle = ltx_mlx.load(tmp_path / dtype)
    assert "gemma" not in bundle.components  # no --gemma-root: text dims from caption_channels / projection width
    want = getattr(mx, dtype)
    for name in ("transformer", "text_projection", "video_decoder", "vocoder"):
        ours = dict(tree_flatten(bundle.get(name).parameters()))
        ref = dict(tree_flatten(official_component(name, ckpt, gemma).parameters()))
        for k, v in ours.items():
            assert v.dtype == want, (name, k)
            assert mx.array_equal(v, ref[k].astype(want)).item(), (name, k)
    with pytest.raises(CheckpointError, match="no gemma"):
        bundle.gemma()


def test_float16_keeps_gemma_in_bfloat16(official, tmp_path):
    version, tmp, ckpt, gemma, config = official
    rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", tmp_path / "fp16", "--dtype",
                      "float16")
    assert rc == 0, err
    bundle = ltx_mlx.load(tmp_path / "fp16")
    assert {v.dtype for _, v in tree_flatten(bundle.gemma().parameters())} == {mx.bfloat16}
    assert {v.dtype for _, v in tree_flatten(bundle.get("transformer").parameters())} == {mx.float16}


# ---------------------------------------------------------------------------------------------- fp8 inputs


def to_fp8(tensors: dict) -> tuple[dict, dict]:
    """Block linears as float8_e4m3fn: even blocks with a per-tensor weight_scale (+ input_scale), odd ones cast-only."""
    out, expected = dict(tensors), {}
    for k, v in tensors.items():
        if not (k.startswith("model.diffusion_model.transformer_blocks.") and k.endswith(("to_q.weight", "ff.net.2.weight"))):
            continue
        block = int(k.split(".")[3])
        if block % 2 == 0:
            scale = v.abs().max().float() / 448.0
            w8 = (v.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
            out[k[: -len("weight")] + "weight_scale"] = scale.reshape(())
            out[k[: -len("weight")] + "input_scale"] = torch.tensor(0.5)
            expected[k] = w8.float() * scale
        else:
            w8 = (v.float() * 8).to(torch.float8_e4m3fn)
            expected[k] = w8.float()
        out[k] = w8
    return out, expected


def test_fp8_checkpoint_converts_to_reference_values(tmp_path):
    tensors, config = official_tensors("2.3")
    fp8, expected = to_fp8(tensors)
    assert any(k.endswith("weight_scale") for k in fp8) and len(expected) >= 6
    ckpt = save_official_checkpoint(tmp_path / "fp8.safetensors", fp8, config, "2.3.0")
    assert SafetensorsFile(ckpt).dtype(next(iter(expected))) == "F8_E4M3"
    for dtype, torch_dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", tmp_path / dtype, "--dtype", dtype)
        assert rc == 0, err
        stored = {}
        for f in (tmp_path / dtype / "transformer").glob("*.safetensors"):
            stored.update(load_file(str(f)))
        assert not any(k.endswith(("weight_scale", "input_scale")) for k in stored)
        for k, want in expected.items():
            got = stored[k[len("model.diffusion_model."):]]
            assert got.dtype == torch_dtype
            assert torch.equal(got, want.to(torch_dtype)), k
        model = ltx_mlx.load(tmp_path / dtype).transformer()  # strict load: no stray scale keys
        assert model.transformer_blocks[0].attn1.to_q.weight.dtype == (mx.float32 if dtype == "float32" else mx.bfloat16)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def ltx23(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    ckpt, gemma, config = write_official(tmp, "2.3")
    return tmp, ckpt, gemma, config


def test_truncated_and_corrupt_checkpoints(ltx23, tmp_path):
    _, ckpt, gemma, _ = ltx23
    data = ckpt.read_bytes()
    cases = {"truncated.safetensors": (data[: len(data) // 2], "truncated"),
             "corrupt.safetensors": (data[:8] + b"{not json" + data[17:], "corrupt"),
             "empty.safetensors": (b"", "empty"),
             "random.safetensors": (os.urandom(4096), "not a safetensors file")}
    for name, (content, phrase) in cases.items():
        (tmp_path / name).write_bytes(content)
        out = tmp_path / f"out-{name}"
        rc, err = run_cli("--checkpoint-path", tmp_path / name, "--gemma-root", gemma, "--mlx-path", out)
        assert_clean_failure(rc, err, out, phrase)
    rc, err = run_cli("--checkpoint-path", tmp_path / "missing.safetensors", "--mlx-path", tmp_path / "o")
    assert_clean_failure(rc, err, tmp_path / "o", "does not exist")


def test_missing_metadata_unknown_version_and_bad_config(ltx23, tmp_path):
    _, ckpt, gemma, config = ltx23
    tensors = load_file(str(ckpt))
    cases = {
        "no-metadata": (None, None, "no metadata 'config'"),
        "ltx-video": (config, "0.9.8", "model_version '0.9.8'"),
        "no-transformer": ({k: v for k, v in config.items() if k != "transformer"}, "2.3.0", "no 'transformer' section"),
        "no-vae-section": ({k: v for k, v in config.items() if k != "vae"}, "2.3.0", "no 'vae' section"),
        "not-ltx-transformer": ({**config, "transformer": {**config["transformer"], "qk_norm": "layer_norm"}}, "2.3.0",
                                "qk_norm"),
        "wrong-layer-count": ({**config, "transformer": {**config["transformer"], "num_layers": 5}}, "2.3.0",
                              "missing: transformer_blocks.3."),
    }
    for name, (cfg, version, phrase) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=None if cfg is None else
                  {"config": json.dumps(cfg), **({"model_version": version} if version else {})})
        out = tmp_path / f"out-{name}"
        rc, err = run_cli("--checkpoint-path", path, "--gemma-root", gemma, "--mlx-path", out)
        assert_clean_failure(rc, err, out, phrase)


def test_mismatched_gemma_folder(ltx23, tmp_path):
    from text_fixtures import save_gemma_folder, tiny_gemma

    _, ckpt, gemma, _ = ltx23
    other = save_gemma_folder(tiny_gemma("multimodal", hidden_size=32, intermediate_size=64), tmp_path / "g32")
    rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", other, "--mlx-path", tmp_path / "o1")
    assert_clean_failure(rc, err, tmp_path / "o1", "Gemma folder does not match", "512", "32 x 8 = 256")
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(gemma, no_tok)
    (no_tok / "tokenizer.json").unlink()
    rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", no_tok, "--mlx-path", tmp_path / "o2")
    assert_clean_failure(rc, err, tmp_path / "o2", "no Gemma tokenizer")
    rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", ckpt, "--mlx-path", tmp_path / "o3")
    assert_clean_failure(rc, err, tmp_path / "o3", "Gemma folder not found")


def test_existing_output_force_and_disk_space(ltx23, tmp_path, monkeypatch):
    _, ckpt, _, _ = ltx23
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", out)
    assert rc == 1 and "already exists" in err and "--force" in err and err.count("\n") == 1
    assert (out / "keep.txt").read_text() == "user data"

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1_000_000))
    rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", tmp_path / "small")
    assert_clean_failure(rc, err, tmp_path / "small", "not enough disk space")
    monkeypatch.setattr(shutil, "disk_usage", real)

    rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", out, "--force")
    assert rc == 0, err
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_interrupted_conversion_leaves_nothing(ltx23, tmp_path, monkeypatch):
    import ltx_mlx.weights.convert as conv

    _, ckpt, gemma, _ = ltx23
    calls = []
    real = conv.write_component

    def flaky(folder, tensors, max_shard_bytes):
        calls.append(folder)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(folder, tensors, max_shard_bytes)

    monkeypatch.setattr(conv, "write_component", flaky)
    out = tmp_path / "out"
    rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", out)
    assert rc == 130 and "interrupted" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_weights_that_do_not_fit_the_config_fail_before_writing(ltx23, tmp_path):
    _, ckpt, _, config = ltx23
    tensors = load_file(str(ckpt))
    tensors["model.diffusion_model.transformer_blocks.0.attn1.to_q.weight"] = torch.zeros(3, 3)
    tensors["vocoder.extra.weight"] = torch.zeros(2)
    path = save_official_checkpoint(tmp_path / "bad.safetensors", tensors, config, "2.3.0")
    rc, err = run_cli("--checkpoint-path", path, "--mlx-path", tmp_path / "out")
    assert_clean_failure(rc, err, tmp_path / "out", "transformer", "transformer_blocks.0.attn1.to_q.weight",
                         "wrong shape")


def test_inputs_from_the_hub_and_bad_flags(ltx23, tmp_path, monkeypatch):
    import huggingface_hub

    _, ckpt, gemma, _ = ltx23
    asked = []

    def fake_download(repo_id, filename, **kw):
        asked.append((repo_id, filename))
        return str(ckpt)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    rc, err = run_cli("--checkpoint-path", "Lightricks/LTX-2.3/ltx-2.3-22b-dev.safetensors", "--mlx-path", tmp_path / "o")
    assert rc == 0, err
    assert asked == [("Lightricks/LTX-2.3", "ltx-2.3-22b-dev.safetensors")]
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("downloaded a whole repo"))
    rc, err = run_cli("--checkpoint-path", "Lightricks/LTX-2.3", "--mlx-path", tmp_path / "o1")
    assert_clean_failure(rc, err, tmp_path / "o1", "repo id", "Lightricks/LTX-2.3/<file>.safetensors")
    rc, err = run_cli("--checkpoint-path", tmp_path, "--mlx-path", tmp_path / "o3")
    assert_clean_failure(rc, err, tmp_path / "o3", "is a folder")

    for bad in (["--q-bits", "3"], ["--dtype", "float64"], ["--distilled-lora", "a", "1", "2"]):
        with pytest.raises(SystemExit) as e:
            main(["--checkpoint-path", str(ckpt), *bad])
        assert e.value.code == 2
    rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", tmp_path / "o2", "--q-high-bits", "8")
    assert_clean_failure(rc, err, tmp_path / "o2", "need -q")


def test_bad_upsampler_inputs(ltx23, tmp_path):
    tmp, ckpt, _, _ = ltx23
    ups = write_upsamplers(tmp_path, "2.3")
    temporal, spatial = ups["temporal_upsampler_x2"][1], ups["spatial_upsampler_x2"][1]
    cases = ((["--spatial-upsampler-path", temporal], "is a temporal upsampler"),
             (["--temporal-upsampler-path", spatial], "is a spatial upsampler"),
             (["--spatial-upsampler-path", ckpt], "not a latent upsampler file"),
             (["--spatial-upsampler-path", spatial, "--spatial-upsampler-path", spatial], "same component folder"))
    for i, (args, phrase) in enumerate(cases):
        out = tmp_path / f"out{i}"
        rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", out, *args)
        assert_clean_failure(rc, err, out, phrase)


def test_force_onto_a_file_is_refused_before_converting(ltx23, tmp_path, monkeypatch):
    import ltx_mlx.weights.convert as conv

    _, ckpt, gemma, _ = ltx23
    monkeypatch.setattr(conv, "plan_conversion", lambda *a, **k: pytest.fail("planned a conversion onto a file"))
    for name in ("model.safetensors", "notes.txt", "no-extension"):
        target = tmp_path / name
        target.write_text("user data")
        for force in ([], ["--force"]):
            rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", target, *force)
            assert rc == 1 and err.count("\n") == 1 and "is a file, not a model folder" in err, err
            assert "Traceback" not in err and target.read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "no-extension", "notes.txt"]


def assert_disk_full_failure(rc, err, out):
    assert_clean_failure(rc, err, out, "the disk filled up while writing", "nothing was left there")


def test_full_disk_mid_write_is_one_line_and_leaves_nothing(ltx23, tmp_path, monkeypatch):
    import errno
    import subprocess

    import ltx_mlx.weights.convert as conv

    _, ckpt, gemma, _ = ltx23
    real = conv.write_component
    for fail_at in (1, 3, 8):  # the first component, one in the middle, Gemma (the last)
        calls = []

        def full(folder, tensors, max_shard_bytes):
            calls.append(folder)
            if len(calls) == fail_at:
                real(folder, list(tensors)[:1], max_shard_bytes)  # a shard lands, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(folder, tensors, max_shard_bytes)

        monkeypatch.setattr(conv, "write_component", full)
        out = tmp_path / f"out-{fail_at}"
        rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", out)
        assert_disk_full_failure(rc, err, out)
        assert len(calls) == fail_at
    monkeypatch.setattr(conv, "write_component", real)
    assert list(tmp_path.iterdir()) == []

    # A real full disk: a small tmpfs (root only), past the up-front estimate, which would refuse it before writing.
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                                                   capture_output=True).returncode == 0
    print("real tmpfs:", "mounted" if mounted else "not available (not root, or mount refused): injected faults only")
    if mounted:
        try:
            monkeypatch.setattr(conv, "ensure_free_space", lambda *a: None)
            out = mnt / "model"
            rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", out)
            assert_disk_full_failure(rc, err, out)
            assert list(mnt.iterdir()) == []
        finally:
            subprocess.run(["umount", str(mnt)], check=True)


def test_interrupt_at_any_instant_leaves_nothing(ltx23, tmp_path, monkeypatch):
    import ltx_mlx.weights.folder as folder_module

    _, ckpt, gemma, _ = ltx23
    real_replace, real_mkdir = os.replace, Path.mkdir

    def interrupt_final_rename(src, dst):
        if Path(src).name.startswith(".") and ".partial-" in Path(src).name:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    def interrupt_after_temporary_mkdir(self, *a, **k):
        real_mkdir(self, *a, **k)
        if ".partial-" in self.name:
            raise KeyboardInterrupt

    for name, target, fake in (("replace", folder_module.os, ("replace", interrupt_final_rename)),
                               ("mkdir", Path, ("mkdir", interrupt_after_temporary_mkdir))):
        with monkeypatch.context() as m:
            m.setattr(target, *fake)
            out = tmp_path / f"out-{name}"
            rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", out)
        assert rc == 130 and "interrupted" in err, (name, err)
        assert list(tmp_path.iterdir()) == [], name
    # --force replacing a folder: interrupted at the swap, the old folder is still there, whole
    out = tmp_path / "model"
    assert run_cli("--checkpoint-path", ckpt, "--mlx-path", out)[0] == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with monkeypatch.context() as m:
        m.setattr(folder_module.os, "replace", interrupt_final_rename)
        rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", out, "--force")
    assert rc == 130 and sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_leftover_of_a_killed_conversion_is_removed_by_the_next_run(ltx23, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from ltx_mlx.weights.load import is_complete

    _, ckpt, gemma, _ = ltx23
    out = tmp_path / "model"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, str(root / "convert.py"), "--checkpoint-path", str(ckpt), "--gemma-root",
                             str(gemma), "--mlx-path", str(out), "--quiet"], cwd=root, stderr=subprocess.PIPE)
    partial = tmp_path / f".model.partial-{proc.pid}"
    deadline = time.time() + 120
    while not any(partial.rglob("*.safetensors")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the conversion finished before it could be killed"
    assert partial.is_dir() and not out.exists() and not is_complete(partial)  # what a kill leaves
    # a live process's partial folder is not touched; a dead one's is removed by the next run to that path
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    alive = tmp_path / f".model.partial-{sleeper.pid}"
    alive.mkdir()
    try:
        rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", out)
        assert rc == 0, err
        assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "model"] and is_complete(out)
    finally:
        sleeper.kill()
        sleeper.wait()
    shutil.rmtree(out)
    assert run_cli("--checkpoint-path", ckpt, "--mlx-path", out)[0] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the sleeper has died: its folder went too


def test_damaged_converted_folder_names_the_file_and_says_convert_again(ltx23, tmp_path):
    _, ckpt, gemma, _ = ltx23
    good = tmp_path / "good"
    assert run_cli("--checkpoint-path", ckpt, "--mlx-path", good, "--dtype", "float32")[0] == 0
    shard = "vocoder/model-00001-of-00001.safetensors"
    data = (good / shard).read_bytes()
    cases = {  # damage -> (file named, phrase)
        "truncated shard": (shard, lambda p: p.write_bytes(data[: len(data) // 2]), "truncated"),
        "empty shard": (shard, lambda p: p.write_bytes(b""), "empty or truncated"),
        "garbage shard": (shard, lambda p: p.write_bytes(data[:8] + b"\xff" * 64 + data[72:]), "corrupt"),
        "corrupt index": (f"vocoder/{INDEX_NAME}", lambda p: p.write_text('{"weight_map": {'), "empty or corrupt"),
        "empty index": (f"vocoder/{INDEX_NAME}", lambda p: p.write_text(""), "empty or corrupt"),
        "index of a list": (f"vocoder/{INDEX_NAME}", lambda p: p.write_text("[1, 2]"), "empty or corrupt"),
        "empty config": ("config.json", lambda p: p.write_text(""), "empty or not valid JSON"),
        "corrupt config": ("config.json", lambda p: p.write_text('{"format": "mlx", '), "empty or not valid JSON"),
    }
    for name, (rel, damage, phrase) in cases.items():
        folder = tmp_path / name.replace(" ", "-")
        shutil.copytree(good, folder)
        damage(folder / rel)
        with pytest.raises(CheckpointError) as e:
            ltx_mlx.load(folder).vocoder()
        message = str(e.value)
        assert str(folder / rel) in message and phrase in message and "convert the model again" in message, name
        assert "\n" not in message and "re-download" not in message, name


def test_official_files_that_are_damaged_say_re_download(ltx23, tmp_path):
    _, ckpt, gemma, _ = ltx23
    data = ckpt.read_bytes()
    shard = sorted(gemma.glob("*.safetensors"))[0]
    for name, damage in (("half", lambda d: d[: len(d) // 2]), ("empty", lambda d: b""),
                         ("header", lambda d: d[:8] + b"\x00" * 32 + d[40:]), ("tail", lambda d: d[:-1])):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(damage(data))
        out = tmp_path / f"out-{name}"
        rc, err = run_cli("--checkpoint-path", bad, "--gemma-root", gemma, "--mlx-path", out)
        assert_clean_failure(rc, err, out, str(bad), "re-download it")
        bad_gemma = tmp_path / f"gemma-{name}"
        shutil.copytree(gemma, bad_gemma)
        (bad_gemma / shard.name).write_bytes(damage(shard.read_bytes()))
        rc, err = run_cli("--gemma-root", bad_gemma, "--mlx-path", out)
        assert_clean_failure(rc, err, out, str(bad_gemma / shard.name), "re-download it")


def test_gemma_tokenizer_missing_or_corrupt_is_refused_at_conversion(ltx23, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    _, ckpt, gemma, _ = ltx23

    def other_vocab(folder):  # a word-level tokenizer of 1,000 tokens, for a Gemma of 300
        vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, 1000)}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(folder / "tokenizer.json"))

    def bos_moved(folder):  # the same size, but <bos> is another id than Gemma's config says
        vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "<bos>": 3, **{f"w{i}": i for i in range(4, 200)}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.save(str(folder / "tokenizer.json"))

    cases = {
        "missing": (lambda f: (f / "tokenizer.json").unlink(), "has no Gemma tokenizer (tokenizer.json)"),
        "only-sentencepiece": (lambda f: ((f / "tokenizer.json").unlink(), (f / "tokenizer.model").write_bytes(b"\n\x05")),
                               "only as tokenizer.model"),
        "corrupt-json": (lambda f: (f / "tokenizer.json").write_text('{"model": {"type": "BPE", '),
                         "could not load the Gemma tokenizer"),
        "empty-json": (lambda f: (f / "tokenizer.json").write_text(""), "could not load the Gemma tokenizer"),
        "corrupt-config": (lambda f: (f / "tokenizer_config.json").write_text("{"), "could not load the Gemma tokenizer"),
        "other-class": (lambda f: (f / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizerFast"}'),
                        "is a LlamaTokenizerFast, not a Gemma tokenizer"),
        "other-vocab": (other_vocab, "has 1000 tokens but the Gemma model only 300"),
        "other-bos": (bos_moved, "BOS id 3, Gemma's config 2"),
    }
    for name, (damage, phrase) in cases.items():
        folder = tmp_path / f"gemma-{name}"
        shutil.copytree(gemma, folder)
        damage(folder)
        for args in (["--checkpoint-path", ckpt, "--gemma-root", folder], ["--gemma-root", folder]):
            out = tmp_path / f"out-{name}"
            rc, err = run_cli(*args, "--mlx-path", out)
            assert_clean_failure(rc, err, out, phrase, str(folder))


def test_checkpoint_kind_is_decided_at_conversion_and_recorded(ltx23, tmp_path):
    from ltx_mlx.pipelines.settings import is_distilled_checkpoint
    from ltx_mlx.weights.checkpoint import checkpoint_kind
    from ltx_mlx.weights.convert import ConvertOptions, convert

    _, ckpt, _, _ = ltx23
    names = {"ltx-2.3-22b-distilled.safetensors": "distilled", "ltx-2.3-22b-distilled-1.1.safetensors": "distilled",
             "ltx-2.3-22b-dev-fp8.safetensors": "dev", "ltx-2-19b-dev.safetensors": "dev",
             "LTX-2.3-22B-Distilled.safetensors": "distilled", "my-finetune.safetensors": None,
             "ltx-2.3-22b.safetensors": None, "devil-distilled-dev.safetensors": None, "ltx-2.3-device.safetensors": None}
    for name, kind in names.items():
        assert checkpoint_kind(name) == kind, name
        assert checkpoint_kind(name, "dev") == "dev"  # --checkpoint-kind wins over the name
    with pytest.raises(ValueError, match="not one of distilled, dev"):
        checkpoint_kind("x.safetensors", "turbo")
    for name, flag, kind in (("ltx-2.3-22b-distilled.safetensors", [], "distilled"),
                             ("ltx-2.3-22b-dev.safetensors", [], "dev"), ("finetune.safetensors", [], None),
                             ("finetune.safetensors", ["--checkpoint-kind", "distilled"], "distilled"),
                             ("ltx-2.3-22b-distilled.safetensors", ["--checkpoint-kind", "dev"], "dev")):
        src = tmp_path / name
        shutil.copyfile(ckpt, src)
        out = tmp_path / "renamed-folder"  # a converted folder's name is arbitrary: config.json tells
        rc, err = run_cli("--checkpoint-path", src, "--mlx-path", out, *flag)
        assert rc == 0, err
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["checkpoint_kind"] == kind, (name, flag)
        if kind is None:
            with pytest.raises(ValueError, match="pass --checkpoint-kind distilled or --checkpoint-kind dev"):
                is_distilled_checkpoint(cfg)
        else:
            assert is_distilled_checkpoint({**cfg, "source": {"checkpoint": "anything.safetensors"}}) == (
                kind == "distilled")
        shutil.rmtree(out)
        src.unlink()
    # folders converted before the kind was recorded still go by their source name
    assert is_distilled_checkpoint({"source": {"checkpoint": "ltx-2.3-22b-distilled.safetensors"}})
    assert not is_distilled_checkpoint({"source": {"checkpoint": "ltx-2.3-22b-dev.safetensors"}})
    with pytest.raises(ValueError, match="--checkpoint-kind"):
        is_distilled_checkpoint({"source": {"checkpoint": "model.safetensors"}})
    opts = ConvertOptions(components=("vocoder",), progress=False, checkpoint_kind="dev")
    assert json.loads((convert(str(ckpt), str(tmp_path / "v"), options=opts) / "config.json").read_text())[
        "checkpoint_kind"] == "dev"


def test_damaged_gemma_config_or_index_says_re_download(ltx23, tmp_path):
    _, _, gemma, _ = ltx23
    for rel, content in (("config.json", ""), ("config.json", "{"), ("config.json", "[]"),
                         (INDEX_NAME, ""), (INDEX_NAME, '{"weight_map": '), (INDEX_NAME, "[1]")):
        folder = tmp_path / "gemma"
        shutil.copytree(gemma, folder)
        (folder / rel).write_text(content)
        out = tmp_path / "out"
        rc, err = run_cli("--gemma-root", folder, "--mlx-path", out)
        assert_clean_failure(rc, err, out, str(folder / rel), "re-download it")
        shutil.rmtree(folder)
