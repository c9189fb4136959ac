"""GELU (tanh) rounds like torch's: computed in float32, one rounding to bf16; the one compile switch."""

import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch

from ltx_mlx.models.activations import gelu_tanh


def test_gelu_tanh_matches_torch_in_float32_and_bf16():
    x = torch.linspace(-8, 8, 200_001)
    ours32 = np.array(gelu_tanh(mx.array(x.numpy())))
    np.testing.assert_allclose(ours32, torch.nn.functional.gelu(x, approximate="tanh").numpy(), rtol=2e-6, atol=2e-7)
    xb = x.bfloat16()
    ref = torch.nn.functional.gelu(xb, approximate="tanh").float().numpy()
    ours = gelu_tanh(mx.array(xb.float().numpy()).astype(mx.bfloat16))
    assert ours.dtype == mx.bfloat16
    same = (np.array(ours.astype(mx.float32)) == ref).mean()
    assert same > 0.99, same  # op-by-op bf16 rounding gives ~57% here


def test_one_compile_switch_covers_every_fused_function():
    """LTX_MLX_COMPILE=0 leaves every `maybe_compile` function (activations, RoPE, AdaLN) a plain Python one."""
    probe = ("import types; from ltx_mlx.models import activations, rope, transformer; "
             "fns = [activations.gelu_tanh, rope._rotate, transformer.modulate, transformer.gated_residual]; "
             "print(sum(type(f) is types.FunctionType for f in fns), len(fns))")
    root = Path(__file__).resolve().parents[1]
    for flag, plain in (("0", True), ("1", False)):
        env = {**os.environ, "LTX_MLX_COMPILE": flag}
        out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True,
                             check=True)
        n_plain, n = map(int, out.stdout.split())
        assert n_plain == (n if plain else 0), (flag, out.stdout)
