"""`ltx_mlx.load`: official checkpoints converted once into the cache, converted folders and hub repo ids, components
on demand and freed, prompts encoded from the converted folder exactly as from the official files, bad inputs."""

import json
import os

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

import ltx_mlx
import ltx_mlx.weights.load as bundle_module
from convert_fixtures import write_official
from ltx_mlx.weights.checkpoint import CheckpointError
from loading import convert_official, load_official


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    return write_official(tmp, "2")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LTX_MLX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_official_checkpoint_is_converted_once_into_the_cache(official, cache, monkeypatch):
    ckpt, gemma, config = official
    model = ltx_mlx.load(ckpt, gemma_root=gemma, dtype="float32", progress=False)
    folders = list(cache.iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("ltx-2-tiny-float32-")
    assert model.folder == folders[0] and model.dtype == "float32" and model.model_version == "2.0.0"
    ref = dict(tree_flatten(load_official(ckpt, "transformer").parameters()))
    for k, v in tree_flatten(model.transformer().parameters()):
        assert mx.array_equal(v, ref[k]).item(), k

    def no_conversion(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(bundle_module, "convert", no_conversion)
    again = ltx_mlx.load(ckpt, gemma_root=gemma, dtype="float32")
    assert again.folder == model.folder
    with pytest.raises(AssertionError, match="converted twice"):  # other settings are another cache entry
        ltx_mlx.load(ckpt, gemma_root=gemma, dtype="bfloat16")
    monkeypatch.undo()
    os.utime(ckpt, ns=(1, 1))  # the key is the content, not the mtime: a touched file reuses the conversion
    monkeypatch.setenv("LTX_MLX_CACHE", str(cache))
    assert ltx_mlx.load(ckpt, gemma_root=gemma, dtype="float32", progress=False).folder == model.folder
    q8 = ltx_mlx.load(ckpt, gemma_root=gemma, dtype="float32", quantize=8, progress=False)
    assert {k: v["bits"] for k, v in q8.config["quantization"].items()} == {"transformer": 8, "gemma": 8}
    assert len(list(cache.iterdir())) == 2 and not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_text_encoder_frees_gemma_before_the_projection(official, cache):
    ckpt, gemma, config = official
    model = ltx_mlx.load(ckpt, gemma_root=gemma, dtype="float32", progress=False)
    encoder = model.text_encoder(max_length=128)
    assert not model._loaded  # Gemma is not cached by the bundle, the projection is built when first used
    ours = encoder.encode(["a red car in the city at night"], free_gemma=True)[0]
    assert ours.video.shape[:2] == (1, 128) and mx.all(ours.mask == 1).item()
    assert encoder.gemma is None and {k[0] for k in model._loaded} == {"text_projection"}  # Gemma really freed
    model.gemma()
    assert {k[0] for k in model._loaded} == {"gemma", "text_projection"}
    model.free("gemma")
    assert {k[0] for k in model._loaded} == {"text_projection"}
    model.free()
    assert model._loaded == {}


def test_converted_folder_from_the_hub(official, cache, monkeypatch):
    import huggingface_hub

    ckpt, gemma, config = official
    folder = convert_official(ckpt, out=cache.parent / "no-gemma.mlx")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(folder))
    model = ltx_mlx.load("someone/ltx-2-mlx")
    assert model.folder == folder and model.components == [
        "transformer", "text_projection", "video_encoder", "video_decoder", "audio_encoder", "audio_decoder", "vocoder"]
    assert model.vocoder() is model.vocoder()  # cached until freed
    with pytest.raises(CheckpointError, match="has no gemma"):
        model.gemma()
    with pytest.raises(CheckpointError, match="0 spatial upsamplers"):
        model.spatial_upsampler()


def test_official_checkpoint_without_gemma_is_refused_before_converting(official, cache, monkeypatch):
    from ltx_mlx.pipelines.api import load as load_pipeline

    ckpt, gemma, config = official
    converted = []
    monkeypatch.setattr(bundle_module, "convert", lambda *a, **k: converted.append(a))
    calls = ((ltx_mlx.load, {}), (ltx_mlx.load, {"dtype": "float32", "quantize": 8}),
             (bundle_module.load, {"dtype": "float16"}), (load_pipeline, {"distilled_lora": (str(ckpt), 1.0)}))
    for load, kwargs in calls:
        with pytest.raises(CheckpointError, match="needs the Gemma-3 text encoder: pass gemma_root"):
            load(ckpt, **kwargs)
    assert converted == [] and not cache.exists()
    # a conversion the cache already holds is taken as it is; a damaged one is not
    folder = bundle_module.cache_folder(str(ckpt), None, (), (), bundle_module.ConvertOptions(dtype="float32"))
    monkeypatch.undo()
    monkeypatch.setenv("LTX_MLX_CACHE", str(cache))
    convert_official(ckpt, out=folder)
    monkeypatch.setattr(bundle_module, "convert", lambda *a, **k: converted.append(a))
    assert ltx_mlx.load(ckpt, dtype="float32").folder == folder
    (folder / "vocoder" / "model-00001-of-00001.safetensors").unlink()
    with pytest.raises(CheckpointError, match="needs the Gemma-3 text encoder"):
        ltx_mlx.load(ckpt, dtype="float32")
    assert converted == []


def test_bad_paths(tmp_path, official):
    ckpt, gemma, config = official
    with pytest.raises(CheckpointError, match="not an ltx-mlx model config"):
        ltx_mlx.load(gemma)  # a Hugging Face folder, not ours
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a converted ltx-mlx model"):
        ltx_mlx.load(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="neither a converted"):
        ltx_mlx.load(tmp_path / "notes.txt")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not an ltx-mlx model config"):
        ltx_mlx.load(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ltx_mlx.load(tmp_path / "missing")
    assert not hasattr(ltx_mlx, "nope")


def test_every_documented_accessor_builds_its_part(official, cache):
    """The component accessors README.md documents, on a folder with every part (an upsampler included)."""
    from convert_fixtures import write_upsamplers

    ckpt, gemma, config = official
    up = write_upsamplers(ckpt.parent, "2")["spatial_upsampler_x2"][1]
    model = ltx_mlx.load(ckpt, gemma_root=gemma, spatial_upsamplers=[str(up)], dtype="float32", progress=False)
    built = {name: getattr(model, name)() for name in (
        "transformer", "text_projection", "gemma", "video_encoder", "video_decoder", "audio_encoder", "audio_decoder",
        "vocoder", "spatial_upsampler")}
    assert {k: type(v).__name__ for k, v in built.items()} == {
        "transformer": "LTXModel", "text_projection": "TextProjection", "gemma": "Gemma3TextModel",
        "video_encoder": "VideoEncoder", "video_decoder": "VideoDecoder", "audio_encoder": "AudioEncoder",
        "audio_decoder": "AudioDecoder", "vocoder": "Vocoder", "spatial_upsampler": "LatentUpsampler"}
    ids, mask = model.tokenizer(max_length=128)("a cat")
    assert ids.shape == mask.shape == (1, 128)
    assert model.text_encoder(max_length=128).encode(["a cat"])[0].video.shape[:2] == (1, 128)
    assert set(model.components) >= set(built) - {"spatial_upsampler"} | {"spatial_upsampler_x2"}
    assert model.config["format_version"] == 2
    with pytest.raises(CheckpointError, match="0 temporal upsamplers"):
        model.temporal_upsampler()
    with pytest.raises(CheckpointError, match="has no distilled_lora"):
        model.distilled_lora()
    model.free()
    assert model._loaded == {}


@pytest.mark.parametrize("option", [{"gemma_root": "g"}, {"dtype": "float32"}, {"quantize": 8},
                                    {"spatial_upsamplers": ["u.safetensors"]}, {"temporal_upsamplers": ["t"]}])
def test_conversion_options_with_a_converted_folder_are_refused(official, cache, option):
    ckpt, gemma, config = official
    folder = ltx_mlx.load(ckpt, gemma_root=gemma, dtype="float32", progress=False).folder
    (name,) = option
    with pytest.raises(ValueError, match=rf"\({name}\) only apply when converting .* already converted"):
        ltx_mlx.load(folder, **option)
    assert ltx_mlx.load(folder).folder == folder
