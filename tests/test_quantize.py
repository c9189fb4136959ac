"""Quantization plans: exactly the intended layers, mixed precision, and a reload that rebuilds the same model."""

import re

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from ltx_mlx.cli.convert import build_parser, options_from_args
from ltx_mlx.weights.checkpoint import load_strict
from ltx_mlx.weights.quantize import MODES, QuantizationPlan, quantize_like_saved, quantize_model, quantized_layers


class Attn(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.to_q = nn.Linear(d, d)
        self.to_gate_logits = nn.Linear(d, heads)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn1 = Attn(d, 2)
        self.ff = nn.Linear(d, 4 * d)
        self.odd = nn.Linear(48, d)  # input dim not a multiple of the group size: must stay dense
        self.scale_shift_table = mx.zeros((6, d))


class Toy(nn.Module):
    def __init__(self, d=64, n=4):
        super().__init__()
        self.patchify_proj = nn.Linear(8, d)
        self.adaln = nn.Linear(d, 6 * d)
        self.transformer_blocks = [Block(d) for _ in range(n)]

    def __call__(self, x):
        h = self.patchify_proj(x)
        for b in self.transformer_blocks:
            h = h + b.ff(b.attn1.to_q(h))[..., : h.shape[-1]]
        return h


@pytest.mark.parametrize("bits", [4, 8])
def test_plan_quantizes_exactly_the_block_linears(bits):
    model = Toy()
    plan = quantize_model(model, QuantizationPlan(bits=bits, group_size=32, high_bits=8, edge_blocks=1))
    got = quantized_layers(model)
    expect = {f"transformer_blocks.{i}.{n}": (8 if i in (0, 3) else bits) for i in range(4) for n in ("attn1.to_q", "ff")}
    assert got == expect
    assert plan.overrides["transformer_blocks.0.odd"] is False
    assert isinstance(model.patchify_proj, nn.Linear) and isinstance(model.adaln, nn.Linear)
    cfg = plan.as_config()
    assert cfg["bits"] == bits and cfg["group_size"] == 32 and cfg["mode"] == "affine"


def test_reload_rebuilds_identical_model():
    mx.random.seed(3)
    model = Toy()
    x = mx.random.normal((2, 5, 8))
    dense_out = model(x)
    plan = quantize_model(model, QuantizationPlan(bits=4, group_size=32, high_bits=8, edge_blocks=1))
    out = model(x)
    saved = dict(tree_flatten(model.parameters()))
    fresh = Toy()
    quantize_like_saved(fresh, saved, plan.as_config())
    load_strict(fresh, saved, "toy")
    assert quantized_layers(fresh) == quantized_layers(model)
    np.testing.assert_array_equal(np.array(fresh(x)), np.array(out))
    dev = float(mx.abs(out - dense_out).max() / mx.abs(dense_out).max())
    assert 0 < dev < 0.1, dev


def test_bad_settings():
    with pytest.raises(ValueError, match="q-bits"):
        quantize_model(Toy(), QuantizationPlan(bits=7))
    with pytest.raises(ValueError, match="group-size"):
        quantize_model(Toy(), QuantizationPlan(bits=4, group_size=48))
    with pytest.raises(ValueError, match="use 16"):
        quantize_model(Toy(), QuantizationPlan(bits=4, group_size=32, mode="nvfp4"))


@pytest.mark.parametrize("plan,message", [
    (dict(bits=3), "--q-bits 3 is not supported with mode affine; use 4 or 8"),  # unmeasured: not offered
    (dict(bits=4, mode="mxfp8", group_size=32), "--q-bits 4 is not supported with mode mxfp8; use 8"),
    (dict(bits=8, mode="mxfp4", group_size=32), "--q-bits 8 is not supported with mode mxfp4; use 4"),
    (dict(bits=8, mode="nvfp4", group_size=16), "--q-bits 8 is not supported with mode nvfp4; use 4"),
    (dict(bits=4, mode="mxfp4", group_size=32, high_bits=8, edge_blocks=1), "--q-high-bits 8 is not supported"),
    (dict(bits=4, mode="mxfp4", group_size=64), "--q-group-size 64 is not supported with mode mxfp4; use 32"),
    (dict(bits=4, group_size=16), "--q-group-size 16 is not supported with mode affine; use 32 or 64 or 128"),
])
def test_settings_outside_the_measured_ones_are_refused(plan, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        QuantizationPlan(**plan).validate()


def test_cli_offers_the_measured_modes():
    args = build_parser().parse_args(["--checkpoint-path", "x", "-q", "--q-mode", "nvfp4", "--q-group-size", "16"])
    plans = options_from_args(args).quantize
    assert {n: (p.bits, p.group_size, p.mode) for n, p in plans.items()} == {n: (4, 16, "nvfp4") for n in plans}
    mode = next(a for a in build_parser()._actions if a.dest == "q_mode")
    assert tuple(mode.choices) == MODES
    args = build_parser().parse_args(["--checkpoint-path", "x", "-q", "--q-mode", "mxfp8", "--q-group-size", "32"])
    with pytest.raises(ValueError, match="use 8"):
        options_from_args(args)


def test_plan_is_not_mutated():
    plan = QuantizationPlan(bits=4, group_size=32, high_bits=8, edge_blocks=1)
    first = quantize_model(Toy(), plan)
    assert plan.overrides == {} and first.overrides
    assert quantize_model(Toy(), plan).overrides == first.overrides
