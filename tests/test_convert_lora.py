"""LoRAs and conversion: fused at conversion == fused at load (float32 and bf16, and the reference's own fusion in
bf16), quantized targets within the quantization error, the distilled LoRA kept as its own component, and errors."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from safetensors.torch import load_file

import ltx_mlx
from convert_fixtures import DIMS, assert_clean_failure, component_outputs, run_cli, write_lora, write_official
from ltx_core.loader.fuse_loras import apply_loras
from ltx_core.loader.primitives import LoraStateDictWithStrength, StateDict
from ltx_mlx.weights.checkpoint import CheckpointError, SafetensorsFile

PREFIX = "model.diffusion_model."
A_MODULES = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.ff.net.2", "transformer_blocks.1.audio_attn1.to_k",
             "transformer_blocks.2.video_to_audio_attn.to_out.0"]
B_MODULES = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.2.audio_ff.net.0.proj"]
# Text-connector layers: the reference accepts LoRA modules for them and fuses nothing (see check_loras).
CONNECTOR_MODULES = ["video_embeddings_connector.transformer_1d_blocks.0.attn1.to_q",
                     "audio_embeddings_connector.transformer_1d_blocks.0.ff.net.2"]
STRAY = "transformer_blocks.7.attn1.to_q"
STRENGTHS = (0.7, -1.3)


def params(model) -> dict:
    return dict(tree_flatten(model.parameters()))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    ckpt, gemma, config = write_official(tmp, "2.3", **DIMS)
    sf = SafetensorsFile(ckpt)
    shapes = {k[len(PREFIX): -len(".weight")]: sf.shape(k) for k in sf.keys()
              if k.startswith(PREFIX) and k.endswith(".weight")}
    shapes[STRAY] = (64, 64)  # a module this 3-block model lacks: refused (test_lora_errors)
    a = write_lora(tmp / "a.safetensors", shapes, A_MODULES, 4, seed=1)
    b = write_lora(tmp / "b.safetensors", shapes, B_MODULES + CONNECTOR_MODULES, 2, seed=2)
    d = write_lora(tmp / "distilled.safetensors", shapes, sorted(m for m in shapes if m.startswith("transformer_blocks.") and ".to_" in m)[:6], 8, seed=3,
                   metadata={"reference_downscale_factor": "2"})
    folders = {}
    for name, dtype, extra in (("base32", "float32", []), ("base16", "bfloat16", []),
                               ("q8", "float32", ["-q", "--q-bits", "8", "--q-group-size", "32"])):
        folders[name] = tmp / name
        assert run_cli("--checkpoint-path", ckpt, "--mlx-path", tmp / name, "--dtype", dtype, *extra)[0] == 0
    return tmp, ckpt, config, a, b, d, folders


def lora_args(a, b):
    return ["--lora", a, STRENGTHS[0], "--lora", b, STRENGTHS[1]]


def test_fused_at_conversion_equals_fused_at_load_float32(setup, tmp_path):
    tmp, ckpt, config, a, b, d, folders = setup
    rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", tmp_path / "fused", "--dtype", "float32", *lora_args(a, b))
    assert rc == 0, err
    record = json.loads((tmp_path / "fused" / "config.json").read_text())["fused_loras"]
    assert record == [{"source": "a.safetensors", "strength": 0.7}, {"source": "b.safetensors", "strength": -1.3}]
    fused = ltx_mlx.load(tmp_path / "fused").transformer()
    at_load = ltx_mlx.load(folders["base32"], loras=[(a, STRENGTHS[0]), (b, STRENGTHS[1])]).transformer()
    base = params(ltx_mlx.load(folders["base32"]).transformer())
    # the connector modules of b are accepted and fuse nothing, as in the reference: the text projection is untouched
    tp_fused, tp_base = (params(ltx_mlx.load(f).text_projection()) for f in (tmp_path / "fused", folders["base32"]))
    assert tp_fused.keys() == tp_base.keys() and all(mx.array_equal(tp_fused[k], tp_base[k]).item() for k in tp_base)
    pf, pl = params(fused), params(at_load)
    changed = {k for k in pf if not mx.array_equal(pf[k], base[k]).item()}
    assert changed == {m + ".weight" for m in A_MODULES + B_MODULES}
    for k in pf:
        assert mx.array_equal(pf[k], pl[k]).item(), k
    # and against the formula W + Σ strength·B@A, in float64
    la, lb = load_file(str(a)), load_file(str(b))
    for m in A_MODULES + B_MODULES:
        want = np.array(base[m + ".weight"], dtype=np.float64)
        for lora, s in ((la, STRENGTHS[0]), (lb, STRENGTHS[1])):
            if f"diffusion_model.{m}.lora_A.weight" in lora:
                want += s * (lora[f"diffusion_model.{m}.lora_B.weight"].double()
                             @ lora[f"diffusion_model.{m}.lora_A.weight"].double()).numpy()
        assert np.abs(np.array(pf[m + ".weight"]) - want).max() <= 1e-6 * np.abs(want).max(), m
    for g, w in zip(component_outputs("transformer", fused, config), component_outputs("transformer", at_load, config)):
        np.testing.assert_array_equal(np.array(g), np.array(w))


def test_bf16_fusion_matches_the_reference(setup, tmp_path):
    tmp, ckpt, config, a, b, d, folders = setup
    rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", tmp_path / "fused16", *lora_args(a, b))
    assert rc == 0, err
    fused = params(ltx_mlx.load(tmp_path / "fused16").transformer())
    at_load = params(ltx_mlx.load(folders["base16"], loras=[(a, STRENGTHS[0]), (b, STRENGTHS[1])]).transformer())
    sd = {k[len(PREFIX):]: v.bfloat16() for k, v in load_file(str(ckpt)).items()
          if k.startswith(PREFIX) and "embeddings_connector" not in k}
    loras = [LoraStateDictWithStrength(StateDict({k.replace("diffusion_model.", ""): v for k, v in
                                                  load_file(str(p)).items()}, None, 0, set()), s)
             for p, s in zip((a, b), STRENGTHS)]
    ref = apply_loras(StateDict(dict(sd), torch.device("cpu"), 0, {torch.bfloat16}), loras, dtype=torch.bfloat16).sd
    exact = 0
    for m in A_MODULES + B_MODULES:
        k = m + ".weight"
        assert fused[k].dtype == mx.bfloat16 and mx.array_equal(fused[k], at_load[k]).item(), k
        ours, want = np.array(fused[k].astype(mx.float32)), ref[k].float().numpy()
        diff = np.abs(ours - want)
        assert (diff <= np.abs(want) * 2.0**-7 + 1e-12).all(), k  # ≤ 1 bf16 ulp (float32 summation order)
        exact += int((diff == 0).sum())
    total = sum(int(np.prod(fused[m + ".weight"].shape)) for m in A_MODULES + B_MODULES)
    print(f"bf16 fusion vs reference apply_loras: {exact}/{total} bit-identical, the rest within 1 ulp")
    assert exact / total > 0.99


def dequantized(p: dict, module: str, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The layer's dense weights and each element's quantization step (its group's scale)."""
    w, s, bias = p[module + ".weight"], p[module + ".scales"], p.get(module + ".biases")
    step = np.repeat(np.abs(np.array(s)), 32, axis=1)
    return np.array(mx.dequantize(w, s, bias, group_size=32, bits=bits)), step


def test_quantized_fusion_within_quantization_error(setup, tmp_path):
    tmp, ckpt, config, a, b, d, folders = setup
    rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", tmp_path / "q8fused", "--dtype", "float32",
                      "-q", "--q-bits", "8", "--q-group-size", "32", *lora_args(a, b))
    assert rc == 0, err
    loras = [(a, STRENGTHS[0]), (b, STRENGTHS[1])]
    exact = params(ltx_mlx.load(folders["base32"], loras=loras).transformer())
    fused_then_quantized = params(ltx_mlx.load(tmp_path / "q8fused").transformer())
    base_q8 = params(ltx_mlx.load(folders["q8"]).transformer())
    fused_into_q8 = params(ltx_mlx.load(folders["q8"], loras=loras).transformer())  # dequantize, add, requantize
    worst = [0.0, 0.0]
    for m in A_MODULES + B_MODULES:
        want = np.array(exact[m + ".weight"])
        got, step = dequantized(fused_then_quantized, m)
        worst[0] = max(worst[0], (np.abs(got - want) / step).max())
        # MLX's affine grid (zero kept exact) rounds to within one step, not half a step
        assert (np.abs(got - want) <= step * 1.001 + 1e-7).all(), m  # one rounding
        got, step = dequantized(fused_into_q8, m)
        _, base_step = dequantized(base_q8, m)
        worst[1] = max(worst[1], (np.abs(got - want) / step).max())
        assert (np.abs(got - want) <= (step + base_step) * 1.001 + 1e-7).all(), m  # two roundings
    print(f"q8 LoRA fusion: fused-then-quantized max error {worst[0]:.3f} steps, fused into q8 at load "
          f"{worst[1]:.3f} steps (of the final layer's quantization step)")


def test_distilled_lora_is_its_own_component(setup, tmp_path):
    tmp, ckpt, config, a, b, d, folders = setup
    out = tmp_path / "with-distilled"
    rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", out, "--dtype", "float32", "--distilled-lora", d, "0.8")
    assert rc == 0, err
    entry = json.loads((out / "config.json").read_text())["components"]["distilled_lora"]
    assert entry == {"kind": "lora", "folder": "distilled_lora", "source": "distilled.safetensors", "strength": 0.8,
                     "reference_downscale_factor": 2}
    bundle = ltx_mlx.load(out)
    base = params(ltx_mlx.load(folders["base32"]).transformer())
    for k, v in params(bundle.transformer()).items():  # the base stays unfused
        assert mx.array_equal(v, base[k]).item(), k
    distilled = bundle.distilled_lora()
    assert distilled.strength == 0.8 and distilled.reference_downscale_factor == 2
    raw = load_file(str(d))
    assert len(distilled.pairs) == 6
    for m, (la, lb) in distilled.pairs.items():
        assert np.array_equal(np.array(la), raw[f"diffusion_model.{m}.lora_A.weight"].numpy())
        assert np.array_equal(np.array(lb), raw[f"diffusion_model.{m}.lora_B.weight"].numpy())
    stage2 = params(bundle.transformer(loras=[distilled]))
    rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", tmp_path / "fused-d", "--dtype", "float32",
                      "--lora", d, "0.8")
    assert rc == 0, err
    for k, v in params(ltx_mlx.load(tmp_path / "fused-d").transformer()).items():
        assert mx.array_equal(v, stage2[k]).item(), k
    assert len(bundle._loaded) == 2  # base and stage-2 transformers are cached separately
    bundle.free("transformer")
    assert bundle._loaded == {}
    assert bundle.distilled_lora(strength=0.25).strength == 0.25


def test_lora_errors(setup, tmp_path):
    tmp, ckpt, config, a, b, d, folders = setup
    sf = SafetensorsFile(ckpt)
    shapes = {k[len(PREFIX): -len(".weight")]: sf.shape(k) for k in sf.keys() if k.endswith(".weight")}
    wrong = write_lora(tmp_path / "ltx2.safetensors", {"transformer_blocks.0.attn1.to_q": (32, 32)},
                       ["transformer_blocks.0.attn1.to_q"], 2, seed=4)
    stray = write_lora(tmp_path / "stray.safetensors", {"blocks.0.proj": (8, 8)}, ["blocks.0.proj"], 2, seed=5)
    one_stray = write_lora(tmp_path / "one-stray.safetensors", {**shapes, STRAY: (64, 64)}, A_MODULES + [STRAY], 2,
                           seed=6)
    connector = CONNECTOR_MODULES[0]
    wrong_connector = write_lora(tmp_path / "wrong-connector.safetensors", {connector: (8, 8)}, [connector], 2, seed=7)
    not_lora = ckpt  # a safetensors file without lora_A / lora_B keys
    (tmp_path / "folder").mkdir()
    cases = (("--lora", wrong, "other model version"), ("--distilled-lora", wrong, "other model version"),
             ("--lora", stray, "none of the LoRA modules"),
             ("--lora", one_stray, f"1 of the 5 LoRA modules match no layer of this model (first: one-stray.safetensors: "
                                   f"{STRAY})"),
             ("--distilled-lora", one_stray, "1 of the 5 LoRA modules match no layer"),
             ("--lora", wrong_connector, f"{connector} is"),
             ("--lora", not_lora, "is not a LoRA"), ("--lora", tmp_path / "folder", "is a folder"))
    for flag, path, phrase in cases:
        rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", tmp_path / "out", flag, path)
        assert_clean_failure(rc, err, tmp_path / "out", phrase)
    with pytest.raises(CheckpointError, match="other model version"):
        ltx_mlx.load(folders["q8"], loras=[wrong]).transformer()
    with pytest.raises(CheckpointError, match="none of the LoRA modules"):
        ltx_mlx.load(folders["base32"]).transformer(loras=[stray])
    for folder in ("base32", "q8"):
        with pytest.raises(CheckpointError, match=f"1 of the 5 LoRA modules match no layer .*{STRAY}"):
            ltx_mlx.load(folders[folder], loras=[one_stray]).transformer()
    with pytest.raises(CheckpointError, match=f"LoRA .* does not fit this model: {connector}"):
        ltx_mlx.load(folders["base32"], loras=[wrong_connector]).transformer()
    with pytest.raises(CheckpointError, match="is not a LoRA"):
        ltx_mlx.load(folders["base32"], loras=[not_lora])
    with pytest.raises(CheckpointError, match="is a folder"):
        ltx_mlx.load(folders["base32"], loras=[tmp_path / "folder"])
    with pytest.raises(ValueError, match="transformer only"):
        ltx_mlx.load(folders["base32"]).load_component("vocoder", loras=[a])


def test_fusion_at_load_into_mixed_precision_layers(setup, tmp_path):
    tmp, ckpt, config, a, b, d, folders = setup
    out = tmp_path / "mixed"
    rc, err = run_cli("--checkpoint-path", ckpt, "--mlx-path", out, "--dtype", "float32", "-q", "--q-bits", "4",
                      "--q-group-size", "32", "--q-high-bits", "8", "--q-edge-blocks", "1")
    assert rc == 0, err
    loras = [(a, STRENGTHS[0]), (b, STRENGTHS[1])]
    exact = params(ltx_mlx.load(folders["base32"], loras=loras).transformer())
    base = params(ltx_mlx.load(out).transformer())
    fused = ltx_mlx.load(out, loras=loras).transformer()
    layers = dict(fused.named_modules())
    for m in A_MODULES + B_MODULES:
        bits = 4 if m.startswith("transformer_blocks.1.") else 8  # each layer keeps its own settings
        assert layers[m].bits == bits
        got, step = dequantized(params(fused), m, bits)
        _, base_step = dequantized(base, m, bits)
        assert (np.abs(got - np.array(exact[m + ".weight"])) <= (step + base_step) * 1.001 + 1e-7).all(), m
