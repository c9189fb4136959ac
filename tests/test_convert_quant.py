"""Quantized conversions: exactly the intended layers (DiT block linears, Gemma decoder-layer linears), per-component
and mixed-precision settings recorded in config.json, reloads identical to the in-memory quantized models, and the
deviation from float32 measured."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import ltx_mlx
from convert_fixtures import DIMS, component_outputs, run_cli, write_official
from ltx_mlx.weights.checkpoint import SafetensorsFile
from ltx_mlx.weights.quantize import (QuantizationPlan, decoder_layer_linears, quantize_model, quantized_layers,
                              transformer_block_linears)
from reference import rel_err
from loading import load_gemma, load_official

ATTENTIONS = ("attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")
FEED_FORWARDS = ("ff.net.0.proj", "ff.net.2", "audio_ff.net.0.proj", "audio_ff.net.2")


def rms_rel(a, b) -> float:
    a, b = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    return float(np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()))


def dit_block_linears(num_layers=3) -> set[str]:
    names = set()
    for i in range(num_layers):
        for a in ATTENTIONS:
            names |= {f"transformer_blocks.{i}.{a}.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")}
        names |= {f"transformer_blocks.{i}.{f}" for f in FEED_FORWARDS}
    return names


def gemma_layer_linears(num_layers=7) -> set[str]:
    return {f"layers.{i}.{p}" for i in range(num_layers) for p in
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quant")
    ckpt, gemma, config = write_official(tmp, "2.3", **DIMS)
    fp32 = tmp / "f32"
    assert run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", fp32, "--dtype", "float32")[0] == 0
    bundle = ltx_mlx.load(fp32)
    reference = {n: component_outputs(n, bundle.get(n), config) for n in ("transformer", "gemma")}
    return tmp, ckpt, gemma, config, reference


def in_memory(name, ckpt, gemma, plan):
    model = load_official(ckpt, "transformer") if name == "transformer" else load_gemma(gemma)
    if plan is not None:
        quantize_model(model, plan, decoder_layer_linears if name == "gemma" else transformer_block_linears)
    return model


@pytest.mark.parametrize("bits", [4, 8])
def test_q4_q8_quantize_exactly_the_block_linears(official, tmp_path, bits):
    tmp, ckpt, gemma, config, fp32_out = official
    out = tmp_path / f"q{bits}"
    rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", out, "--dtype", "float32",
                      "-q", "--q-bits", bits, "--q-group-size", 32)
    assert rc == 0, err
    cfg = json.loads((out / "config.json").read_text())
    settings = {"group_size": 32, "bits": bits, "mode": "affine"}
    assert cfg["quantization"] == {"transformer": settings, "gemma": settings}
    assert json.loads((out / "gemma" / "config.json").read_text())["quantization"] == settings
    bundle = ltx_mlx.load(out)
    expected = {"transformer": dit_block_linears(), "gemma": gemma_layer_linears()}
    for name in ("transformer", "gemma"):
        model = bundle.get(name)
        assert quantized_layers(model) == {p: bits for p in expected[name]}, name
        plan = QuantizationPlan(bits=bits, group_size=32)
        mem = in_memory(name, ckpt, gemma, plan)
        assert quantized_layers(mem) == quantized_layers(model)
        got, want = component_outputs(name, model, config), component_outputs(name, mem, config)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.array(g), np.array(w), err_msg=name)
        dev_max = max(rel_err(g, f) for g, f in zip(got, fp32_out[name]))
        dev_rms = max(rms_rel(g, f) for g, f in zip(got, fp32_out[name]))
        print(f"q{bits} {name}: reload == in-memory quantized model; deviation from fp32: "
              f"max|d|/max|ref| {dev_max:.2e}, rms(d)/rms(ref) {dev_rms:.2e}")
        # random Gaussian weights are the hardest case for 4 bits; trained weights quantize better
        assert 0 < dev_rms < (0.03 if bits == 8 else 0.5), (name, bits, dev_rms)
    for name in ("video_decoder", "vocoder", "text_projection", "audio_decoder"):  # never quantized
        assert quantized_layers(bundle.get(name)) == {}
        assert not any(k.endswith(".scales") for k in SafetensorsFile(
            next((out / name).glob("*.safetensors"))).keys())
    dense = sum(f.stat().st_size for f in (tmp / "f32" / "transformer").glob("*.safetensors"))
    packed = sum(f.stat().st_size for f in (out / "transformer").glob("*.safetensors"))
    print(f"q{bits} transformer folder: {packed / dense:.2f} of float32")
    assert packed < dense * (0.8 if bits == 8 else 0.6)  # AdaLN tables, norms, projections stay float32


def test_mixed_precision_and_per_component_settings(official, tmp_path):
    tmp, ckpt, gemma, config, fp32_out = official
    out = tmp_path / "mixed"
    rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", out, "--dtype", "float32",
                      "-q", "--q-bits", 4, "--q-group-size", 32, "--q-high-bits", 8, "--q-edge-blocks", 1,
                      "--gemma-q-bits", 8)
    assert rc == 0, err
    cfg = json.loads((out / "config.json").read_text())["quantization"]
    bundle = ltx_mlx.load(out)
    dit = quantized_layers(bundle.transformer())
    assert dit == {p: 8 if p.startswith(("transformer_blocks.0.", "transformer_blocks.2.")) else 4
                   for p in dit_block_linears()}
    assert set(k for k in cfg["transformer"] if "." in k) == {p for p, b in dit.items() if b == 8}
    assert cfg["transformer"]["bits"] == 4 and cfg["gemma"]["bits"] == 8
    assert quantized_layers(bundle.gemma()) == {p: 8 for p in gemma_layer_linears()}
    plan = QuantizationPlan(bits=4, group_size=32, high_bits=8, edge_blocks=1)
    mem = in_memory("transformer", ckpt, gemma, plan)
    for g, w in zip(component_outputs("transformer", bundle.transformer(), config),
                    component_outputs("transformer", mem, config)):
        np.testing.assert_array_equal(np.array(g), np.array(w))

    only = tmp_path / "dit-only"
    rc, err = run_cli("--checkpoint-path", ckpt, "--gemma-root", gemma, "--mlx-path", only, "--dtype", "float32",
                      "-q", "--q-bits", 8, "--quantize-components", "transformer", "--q-group-size", 64)
    assert rc == 0, err
    bundle = ltx_mlx.load(only)
    assert quantized_layers(bundle.gemma()) == {}
    cfg = json.loads((only / "config.json").read_text())["quantization"]
    assert set(cfg) == {"transformer"}
    # group size 64: layers whose input is the 32-wide audio stream cannot be grouped and stay dense, recorded as such
    dit = quantized_layers(bundle.transformer())
    dense = {k for k, v in cfg["transformer"].items() if v is False}
    assert dense and dense | set(dit) == dit_block_linears() and not dense & set(dit)
    model = bundle.transformer()
    for path in dense:
        layer = dict(model.named_modules())[path]
        assert type(layer) is nn.Linear and layer.weight.shape[1] % 64
    mem = in_memory("transformer", ckpt, gemma, QuantizationPlan(bits=8, group_size=64))
    for g, w in zip(component_outputs("transformer", model, config), component_outputs("transformer", mem, config)):
        np.testing.assert_array_equal(np.array(g), np.array(w))


def test_bf16_quantized_conversion_keeps_bf16_scales(official, tmp_path):
    tmp, ckpt, gemma, config, _ = official
    out = tmp_path / "q4bf16"
    assert run_cli("--checkpoint-path", ckpt, "--mlx-path", out, "-q", "--q-group-size", 32)[0] == 0
    params = dict(tree_flatten(ltx_mlx.load(out).transformer().parameters()))
    assert params["transformer_blocks.1.attn1.to_q.weight"].dtype == mx.uint32
    assert params["transformer_blocks.1.attn1.to_q.scales"].dtype == mx.bfloat16
    assert params["transformer_blocks.1.attn1.to_q.bias"].dtype == mx.bfloat16
    assert params["adaln_single.linear.weight"].dtype == mx.bfloat16


def test_quantization_config_that_disagrees_with_the_tensors_names_component_and_mismatch(official, tmp_path):
    import shutil

    from convert_fixtures import write_lora
    from ltx_mlx.weights.checkpoint import CheckpointError

    tmp, ckpt, gemma, config, _ = official
    q8, dense = tmp_path / "q8", tmp_path / "dense"
    assert run_cli("--checkpoint-path", ckpt, "--mlx-path", q8, "-q", "--q-bits", "8", "--q-group-size", "32",
                   "--quantize-components", "transformer")[0] == 0
    assert run_cli("--checkpoint-path", ckpt, "--mlx-path", dense, "--dtype", "float32")[0] == 0
    layer = "transformer_blocks.0.attn1.to_q"
    lora = write_lora(tmp_path / "lora.safetensors", {layer: (64, 64)}, [layer], 2, seed=3)

    def edited(src, name, edit):
        folder = tmp_path / name
        shutil.copytree(src, folder)
        cfg = json.loads((folder / "config.json").read_text())
        edit(cfg["quantization"])
        (folder / "config.json").write_text(json.dumps(cfg))
        return folder

    cases = (
        (q8, "no-entry", lambda q: q.pop("transformer"), "are quantized (e.g. transformer_blocks."),
        (q8, "other-bits", lambda q: q["transformer"].update(bits=4), "says 4-bit, group size 32 for "),
        (q8, "other-group", lambda q: q["transformer"].update(group_size=64), "says 8-bit, group size 64 for"),
        (q8, "layer-off", lambda q: q["transformer"].update({layer: False}), f"{layer} is stored quantized, but"),
        (dense, "not-quantized", lambda q: q.update(transformer={"bits": 4, "group_size": 64, "mode": "affine"}),
         "records 4-bit quantization but no stored tensor is quantized"),
    )
    for src, name, edit, phrase in cases:
        folder = edited(src, name, edit)
        for loras in ([], [lora]):  # a LoRA on top changes nothing: the folder is blamed, never the LoRA
            with pytest.raises(CheckpointError) as e:
                ltx_mlx.load(folder, loras=loras).transformer()
            message = str(e.value)
            assert message.startswith("transformer: ") and phrase in message, (name, message)
            assert "convert the model again" in message and "LoRA" not in message and "\n" not in message, name
