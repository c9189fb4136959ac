"""LoRA fusion against the reference's `apply_loras` (bf16), several LoRAs at once, quantized targets, errors."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ltx_core.loader.fuse_loras import apply_loras
from ltx_core.loader.primitives import LoraStateDictWithStrength, StateDict
from ltx_mlx.weights.checkpoint import CheckpointError
from ltx_mlx.weights.lora import fuse_loras, read_lora
from reference import to_np

SHAPES = {"transformer_blocks.0.attn1.to_q.weight": (32, 64), "transformer_blocks.0.ff.net.2.weight": (64, 96),
          "transformer_blocks.1.attn1.to_q.weight": (32, 64)}


def _model_sd(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {k: (torch.randn(s, generator=g) * 0.05).bfloat16() for k, s in SHAPES.items()}
    sd["transformer_blocks.0.attn1.to_q.bias"] = torch.zeros(32, dtype=torch.bfloat16)
    return sd


def _write_lora(path, modules, rank, seed):
    g = torch.Generator().manual_seed(seed)
    t = {}
    for m in modules:
        out_dim, in_dim = SHAPES[m + ".weight"]
        t[f"diffusion_model.{m}.lora_A.weight"] = (torch.randn(rank, in_dim, generator=g) * 0.1).bfloat16()
        t[f"diffusion_model.{m}.lora_B.weight"] = (torch.randn(out_dim, rank, generator=g) * 0.1).bfloat16()
        t[f"diffusion_model.{m}.alpha"] = torch.tensor(float(rank))
    save_file(t, str(path), metadata={"reference_downscale_factor": "2"})
    return {k.replace("diffusion_model.", ""): v for k, v in t.items()}


def _mx_weights(sd):
    return {k: mx.array(v.float().numpy()).astype(mx.bfloat16) for k, v in sd.items()}


def test_fusion_matches_reference_bf16(tmp_path):
    sd = _model_sd()
    l1 = _write_lora(tmp_path / "a.safetensors", ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.ff.net.2"], 4, 1)
    l2 = _write_lora(tmp_path / "b.safetensors", ["transformer_blocks.0.attn1.to_q"], 8, 2)
    ref = apply_loras(StateDict(dict(sd), torch.device("cpu"), 0, {torch.bfloat16}),
                      [LoraStateDictWithStrength(StateDict(l1, None, 0, set()), 0.7),
                       LoraStateDictWithStrength(StateDict(l2, None, 0, set()), -1.3)], dtype=torch.bfloat16).sd
    ours = _mx_weights(sd)
    loras = [read_lora(tmp_path / "a.safetensors", 0.7), read_lora(tmp_path / "b.safetensors", -1.3)]
    assert loras[0].reference_downscale_factor == 2
    assert all(k.endswith(".alpha") for k in loras[0].ignored)
    assert fuse_loras(ours, loras) == []
    for k in SHAPES:
        assert ours[k].dtype == mx.bfloat16
        # bit-exact except where float32 summation order flips a bf16 rounding (≤ 1 ulp)
        diff = np.abs(to_np(ours[k]) - ref[k].float().numpy())
        ulp = np.abs(ref[k].float().numpy()) * 2.0**-7
        assert (diff <= ulp + 1e-12).all(), k
        assert (diff == 0).mean() > 0.99, k
    untouched = "transformer_blocks.1.attn1.to_q.weight"
    np.testing.assert_array_equal(to_np(ours[untouched]), sd[untouched].float().numpy())


def test_fusion_into_quantized_weights_stays_within_quantization_error(tmp_path):
    sd = _model_sd()
    _write_lora(tmp_path / "a.safetensors", ["transformer_blocks.0.attn1.to_q"], 4, 1)
    lora = read_lora(tmp_path / "a.safetensors", 1.0)
    dense = {k: v.astype(mx.float32) for k, v in _mx_weights(sd).items()}
    fuse_loras(dense, [lora])
    q = {"group_size": 32, "bits": 8, "mode": "affine"}
    key = "transformer_blocks.0.attn1.to_q"
    w, s, b = mx.quantize(_mx_weights(sd)[key + ".weight"].astype(mx.float32), group_size=32, bits=8)
    quant = {key + ".weight": w, key + ".scales": s, key + ".biases": b}
    fuse_loras(quant, [lora], quantization=q)
    fused = mx.dequantize(quant[key + ".weight"], quant[key + ".scales"], quant[key + ".biases"], group_size=32, bits=8)
    err = float(mx.abs(fused - dense[key + ".weight"]).max())
    step = float(quant[key + ".scales"].max())  # one quantization step of the coarsest group
    assert err <= step, (err, step)  # the base weight's quantization error plus one requantization
    assert float(mx.abs(dense[key + ".weight"] - _mx_weights(sd)[key + ".weight"].astype(mx.float32)).max()) > 10 * step


def test_mismatched_or_foreign_loras_are_clear_errors(tmp_path):
    sd = _model_sd()
    save_file({"diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 48),
               "diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 4)},
              str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match="other model version"):
        fuse_loras(_mx_weights(sd), [read_lora(tmp_path / "wrong.safetensors")])
    save_file({"diffusion_model.foo.lora_A.weight": torch.zeros(4, 8), "diffusion_model.foo.lora_B.weight": torch.zeros(8, 4)},
              str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="none of the LoRA modules"):
        fuse_loras(_mx_weights(sd), [read_lora(tmp_path / "foreign.safetensors")])
    save_file({"diffusion_model.foo.lora_A.weight": torch.zeros(4, 8)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(CheckpointError, match="no lora_B"):
        read_lora(tmp_path / "half.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "none.safetensors"))
    with pytest.raises(CheckpointError, match="holds no LoRA"):
        read_lora(tmp_path / "none.safetensors")
