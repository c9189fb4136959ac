"""Helpers for parity tests against the live reference (ltx-core / ltx-pipelines 1.0.0).

Tests build a reference component at a tiny config with random weights, save it as an
official-format checkpoint (real key prefixes, metadata `config` JSON and `model_version`),
load that file through ltx-mlx's own loader, and compare outputs on the same inputs.
"""

import json

import mlx.core as mx
import numpy as np
import torch
from safetensors.torch import save_file


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Fill every floating parameter/buffer with deterministic random values.

    Many reference parameters are created with torch.empty; statistics get positive stds, and
    computed filter/basis buffers (anti-alias filters, STFT/mel bases) are kept as built.
    """
    gen = torch.Generator().manual_seed(seed)
    keep = ("filter", "forward_basis", "inverse_basis", "mel_basis")
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point() or name.endswith(keep):
                continue
            if "std-of-means" in name:
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif "mean-of-means" in name:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * std)
    return module


def save_official_checkpoint(path, tensors: dict, config: dict | None = None, model_version: str | None = None):
    """Write tensors the way Lightricks' single-file checkpoints are written."""
    metadata = {}
    if config is not None:
        metadata["config"] = json.dumps(config)
    if model_version is not None:
        metadata["model_version"] = model_version
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def prefixed_state_dict(module: torch.nn.Module, prefix: str) -> dict:
    return {prefix + k: v for k, v in module.state_dict().items()}


def to_mx(t: torch.Tensor) -> mx.array:
    return mx.array(t.detach().to(torch.float32).cpu().numpy())


def to_np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float32).cpu().numpy()
    return np.array(x.astype(mx.float32) if isinstance(x, mx.array) else x, dtype=np.float32)


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref| (the parity metric used across the suite)."""
    a, b = to_np(ours), to_np(ref)
    assert a.shape == b.shape, f"shape mismatch: ours {a.shape} vs reference {b.shape}"
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def assert_parity(ours, ref, tol: float = 1e-5, what: str = "output"):
    err = rel_err(ours, ref)
    assert err <= tol, f"{what}: max|ours-ref|/max|ref| = {err:.3e} > {tol:.0e}"
    return err
