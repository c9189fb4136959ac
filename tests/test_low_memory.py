"""Low-memory mode: transformer blocks and Gemma layers read from the converted folder one at a time give the
same bits as resident weights (float32 and q8, with LoRAs fused per block), the measured peak of a forward
drops by the block bytes the folder's headers give, per-block evaluation changes nothing, and a whole
generation (text encoder gone before the DiT loads) gives the same frames and audio."""

import gc
import weakref

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import ltx_mlx
from convert_fixtures import DIMS, run_cli, transformer_inputs, write_lora, write_official
from ltx_mlx.models import transformer as transformer_module
from ltx_mlx.weights.checkpoint import SafetensorsFile
from ltx_mlx.weights.load import LTXModelBundle
from ltx_mlx.weights.stream import block_bytes
from pipeline_fixtures import convert_folder, write_pipeline_checkpoints

PREFIX = "model.diffusion_model."
LAYERS = 6
LORA_MODULES = ["patchify_proj", "transformer_blocks.0.attn1.to_q", "transformer_blocks.2.ff.net.2",
                "transformer_blocks.5.audio_to_video_attn.to_v", "transformer_blocks.4.audio_ff.net.0.proj"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("low_memory")
    ckpt, _, config = write_official(tmp, "2.3", num_layers=LAYERS, **DIMS)
    sf = SafetensorsFile(ckpt)
    shapes = {k[len(PREFIX): -len(".weight")]: sf.shape(k) for k in sf.keys()
              if k.startswith(PREFIX) and k.endswith(".weight")}
    lora = write_lora(tmp / "lora.safetensors", shapes, LORA_MODULES, 4, seed=1)
    folders = {}
    for name, extra in (("f32", []), ("q8", ["-q", "--q-bits", "8", "--q-group-size", "32"])):
        assert run_cli("--checkpoint-path", ckpt, "--mlx-path", tmp / name, "--dtype", "float32", *extra)[0] == 0
        folders[name] = tmp / name
    return config["transformer"], folders, (str(lora), 0.7)


def forward(model, cfg):
    video, audio = transformer_inputs(cfg)
    out = model(video, audio)
    mx.eval(out)
    return [np.array(x) for x in out]


@pytest.mark.parametrize("folder", ["f32", "q8"])
def test_streamed_transformer_equals_resident_with_a_lora(setup, folder):
    cfg, folders, lora = setup
    bundle = LTXModelBundle(folders[folder])
    resident = bundle.load_component("transformer", [lora])
    streamed = bundle.load_component("transformer", [lora], stream=True)
    if folder == "q8":
        assert isinstance(streamed.transformer_blocks[0].attn1.to_q, transformer_module.nn.QuantizedLinear)
    expected = forward(resident, cfg)
    for _ in range(2):  # a second forward reads the blocks again
        got = forward(streamed, cfg)
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(g, e)
    # the LoRA changed the output (so fusing per block was really exercised), and what is resident is the same
    plain = forward(bundle.load_component("transformer"), cfg)
    assert not np.array_equal(plain[0], expected[0])
    res = dict(tree_flatten(resident.parameters()))
    for k, v in tree_flatten(streamed.parameters()):
        if not k.startswith("transformer_blocks."):
            np.testing.assert_array_equal(np.array(v), np.array(res[k]))


def test_per_block_evaluation_changes_nothing(setup, monkeypatch):
    cfg, folders, _ = setup
    model = LTXModelBundle(folders["f32"]).load_component("transformer")
    calls = []
    real_eval = mx.eval
    monkeypatch.setattr(mx, "eval", lambda *a: (calls.append(1), real_eval(*a))[1])
    video, audio = transformer_inputs(cfg)
    tokens = video.latent.shape[1] + audio.latent.shape[1]
    model.eval_per_block_tokens = tokens + 1
    once = forward(model, cfg)
    assert len(calls) == 1  # the test's own mx.eval: the forward ran as one graph
    model.eval_per_block_tokens = tokens
    calls.clear()
    each = forward(model, cfg)
    assert len(calls) == LAYERS + 1
    for a, b in zip(once, each):
        np.testing.assert_array_equal(a, b)


def measured_peak(model, cfg) -> int:
    video, audio = transformer_inputs(cfg)
    mx.eval(video.latent, audio.latent, video.context, audio.context)
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()
    mx.eval(model(video, audio))
    return mx.get_peak_memory()


def test_streamed_peak_drops_by_the_block_weights(setup):
    """Resident: all weights + activations. Streamed: non-block weights + two blocks (the current one and the
    next one's read) + the same activations (both evaluate per block here)."""
    cfg, folders, _ = setup
    resident_bytes, blocks = block_bytes(folders["f32"] / "transformer", "transformer")
    assert len(blocks) == LAYERS and resident_bytes > 0
    bundle = LTXModelBundle(folders["f32"])
    peaks = {}
    for stream in (False, True):
        gc.collect()
        mx.clear_cache()
        before = mx.get_active_memory()
        model = bundle.load_component("transformer", stream=stream)
        model.eval_per_block_tokens = 0
        loaded = mx.get_active_memory() - before
        measured_peak(model, cfg)  # warm-up (compiled kernels, RoPE caches)
        peak = measured_peak(model, cfg)
        peaks[stream] = peak, loaded, mx.get_active_memory() - before  # the last: after the forward
        del model
    assert peaks[False][1] == pytest.approx(resident_bytes + sum(blocks), rel=0.02)
    assert peaks[True][1] == pytest.approx(resident_bytes, rel=0.02)  # at load, no block is read
    assert peaks[True][2] == pytest.approx(resident_bytes, rel=0.02)  # and after a forward, none is kept
    drop = peaks[False][0] - peaks[True][0]
    expected = sum(blocks) - 2 * max(blocks)
    print(f"resident {resident_bytes} B, blocks {blocks}, peaks {peaks}, drop {drop}, expected {expected}")
    assert drop == pytest.approx(expected, rel=0.05), (drop, expected, blocks)


# ---------------------------------------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def dev_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("low_memory_run")
    _, dev, gemma, upsampler, lora = write_pipeline_checkpoints(tmp)
    return convert_folder(dev, tmp / "dev-mlx", gemma, upsampler, lora)


def test_text_encoder_streams_gemma_layers(dev_folder):
    bundle = LTXModelBundle(dev_folder)
    prompts = ["a cat walks on the beach", "blurry"]
    expected = bundle.text_encoder().encode(prompts)
    encoder = bundle.text_encoder(stream=True)
    assert encoder.gemma.layer_stream is not None
    got = encoder.encode(prompts)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(np.array(g.video), np.array(e.video))
        np.testing.assert_array_equal(np.array(g.audio), np.array(e.audio))


def test_low_memory_generation_is_identical_and_frees_the_text_encoder_first(dev_folder, monkeypatch):
    """Dev checkpoint, distilled pipeline: both stages stream the transformer with the distilled LoRA fused."""
    results = {}
    for low in (False, True):
        pipe = ltx_mlx.load(dev_folder)
        built, at_transformer = [], []
        load_component = pipe.load_component

        def spy(name, loras=(), stream=False):
            if name == "transformer":
                gc.collect()
                at_transformer.append(([r() is None for r in built], [k[0] for k in pipe._loaded], stream))
            model = load_component(name, loras, stream)
            if name in ("gemma", "text_projection"):
                built.append(weakref.ref(model))
            return model

        monkeypatch.setattr(pipe, "load_component", spy)
        r = pipe.generate("a cat walks on the beach at sunset", height=64, width=64, num_frames=9, seed=4,
                          progress=False, low_memory=low)
        results[low] = r
        assert at_transformer and len(built) == 2
        for freed, cached, stream in at_transformer:
            assert all(freed) and not {"gemma", "text_projection"} & set(cached) and stream is low
    np.testing.assert_array_equal(results[True].frames, results[False].frames)
    np.testing.assert_array_equal(results[True].audio, results[False].audio)
    assert results[True].frames.std() > 0


def test_low_memory_must_be_a_bool(dev_folder):
    with pytest.raises(TypeError, match="low_memory must be True or False"):
        ltx_mlx.load(dev_folder).generate("a cat", low_memory="yes")


def test_generate_cli_passes_low_memory(dev_folder, monkeypatch, capsys):
    from ltx_mlx.cli.generate import main
    from ltx_mlx.pipelines.api import Pipeline

    def spy(self, prompt, **kwargs):
        raise ValueError(f"spy low_memory={kwargs['low_memory']}")

    monkeypatch.setattr(Pipeline, "generate", spy)
    out = dev_folder.parent / "out.mp4"
    for flags, expected in (([], False), (["--low-memory"], True)):
        assert main(["--model", str(dev_folder), "--prompt", "a cat", "--output-path", str(out), "--quiet",
                     *flags]) == 1
        assert f"spy low_memory={expected}" in capsys.readouterr().err
