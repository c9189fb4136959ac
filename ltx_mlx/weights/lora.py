"""LoRA files in the official naming, fused into transformer weights as the reference fuses them.

A LoRA file holds `diffusion_model.<module>.lora_A.weight (r, in)` and `…lora_B.weight (out, r)`.
Fusion is `W += strength · B @ A` with no alpha/rank scaling (the reference ignores `.alpha`), summed
over every LoRA that touches `W`. Bf16 weights are fused with the reference's bf16 rounding steps;
MLX-quantized weights are dequantised, fused in float32 and requantised with their own settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import mlx.core as mx

from .checkpoint import CheckpointError, SafetensorsFile

_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass
class LoRA:
    path: str
    strength: float
    pairs: dict[str, tuple[mx.array, mx.array]]  # module name -> (A, B)
    ignored: list[str] = field(default_factory=list)  # keys of the file that fusion does not use
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def reference_downscale_factor(self) -> int:
        """IC-LoRA metadata: how much smaller the reference video is than the target (default 1)."""
        return int(float(self.metadata.get("reference_downscale_factor", 1)))


def read_lora(path: str | os.PathLike, strength: float = 1.0) -> LoRA:
    """Read a LoRA safetensors file; module names lose every `diffusion_model.` as in the reference."""
    if os.path.isdir(path):
        raise CheckpointError(f"the LoRA {os.fspath(path)} is a folder: pass the LoRA's .safetensors file")
    if not os.path.isfile(path):
        raise CheckpointError(f"LoRA file not found: {os.fspath(path)}")
    sf = SafetensorsFile(path)
    pairs, ignored = {}, []
    names = [k.replace("diffusion_model.", "") for k in sf.keys()]
    by_name = dict(zip(names, sf.keys()))
    for name in names:
        if name.endswith(_A):
            module = name[: -len(_A)]
            if module + _B not in by_name:
                raise CheckpointError(f"LoRA {sf.path}: {module} has lora_A but no lora_B; the file is incomplete")
            a, b = sf.get(by_name[name]), sf.get(by_name[module + _B])
            if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
                raise CheckpointError(f"LoRA {sf.path}: {module} has lora_A {a.shape} and lora_B {b.shape}, "
                                      "which do not form a low-rank pair")
            pairs[module] = (a, b)
        elif name.endswith(_B):
            if name[: -len(_B)] + _A not in by_name:
                raise CheckpointError(f"LoRA {sf.path}: {name[:-len(_B)]} has lora_B but no lora_A")
        else:
            ignored.append(by_name[name])
    if not pairs:
        raise CheckpointError(f"{sf.path} is not a LoRA: it holds no LoRA weights (no '*.lora_A.weight' / "
                              "'*.lora_B.weight' keys)")
    return LoRA(os.fspath(path), float(strength), pairs, ignored, dict(sf.metadata))


def _delta(lora: LoRA, module: str, dtype: mx.Dtype) -> mx.array:
    a, b = lora.pairs[module]
    # As the reference: B·strength rounded to the LoRA's dtype, product accumulated in float32, rounded to `dtype`.
    b = (b.astype(mx.float32) * lora.strength).astype(b.dtype)  # torch keeps the scalar in float32, MLX would round it
    return mx.matmul(b.astype(mx.float32), a.astype(mx.float32)).astype(dtype)


def check_loras(loras: list[LoRA], shapes: dict[str, tuple[int, int]],
                unfused: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """The one check of LoRAs against a model: `shapes` maps each Linear module to its (out, in).

    `unfused`: layers of the model that a LoRA may name but that are not fused — the text connectors
    (`video_embeddings_connector.*`, `audio_embeddings_connector.*`). The reference fuses LoRAs into the
    transformer's state dict, connector keys included, and then drops those keys when it loads the
    transformer (its text-projection builder takes no LoRAs): it accepts them and ignores them, and so do we.
    A module of another shape means a LoRA for a different model (e.g. LTX-2 vs LTX-2.3), and a module that
    is no layer of this model at all means the same: both are errors. Returns the unfused modules ("file: module")."""
    unmatched, ignored = [], []
    for lora in loras:
        for module, (a, b) in lora.pairs.items():
            shape = shapes.get(module)
            if shape is None and module in (unfused or {}):
                shape = unfused[module]
                ignored.append(f"{os.path.basename(lora.path)}: {module}")
            if shape is None:
                unmatched.append(f"{os.path.basename(lora.path)}: {module}")
            elif (b.shape[0], a.shape[1]) != tuple(shape):
                raise CheckpointError(
                    f"LoRA {lora.path} does not fit this model: {module} is {tuple(shape)} in the model but "
                    f"{(b.shape[0], a.shape[1])} in the LoRA. Is it made for the other model version (LTX-2 vs LTX-2.3)?")
    total = sum(len(lr.pairs) for lr in loras)
    if unmatched and len(unmatched) == total:
        raise CheckpointError("none of the LoRA modules exist in this model: is it a LoRA for another model? "
                              f"(first: {', '.join(unmatched[:3])})")
    if unmatched:
        raise CheckpointError(f"{len(unmatched)} of the {total} LoRA modules match no layer of this model "
                              f"(first: {', '.join(unmatched[:3])}): is the LoRA made for another model?")
    return ignored


def fuse_loras(weights: dict[str, mx.array], loras: list[LoRA], quantization: dict | None = None,
               unfused: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Fuse `loras` into `weights` (transformer keys, reference names) in place.

    `quantization` ({group_size, bits, mode}) applies to weights that come with `.scales`; `unfused` as in
    `check_loras`, which refuses any module that matches nothing. Returns the unfused (ignored) modules.
    """
    modules = {m for lr in loras for m in lr.pairs if m + ".weight" in weights}
    ignored = check_loras(loras, {m: logical_shape(weights, m, quantization) for m in modules}, unfused)
    for module in sorted(modules):
        hits = [lora for lora in loras if module in lora.pairs]
        if module + ".scales" in weights:
            _fuse_quantized(weights, module, hits, quantization)
        else:
            _fuse_dense(weights, module + ".weight", hits)
    return ignored


def logical_shape(weights, module: str, quantization: dict | None) -> tuple[int, int]:
    """(out, in) of a Linear weight as stored: dense, or MLX-quantized with `quantization`'s bits."""
    w = weights[module + ".weight"]
    if module + ".scales" not in weights:
        return tuple(w.shape)
    if quantization is None:
        raise ValueError(f"{module} is quantized: pass its quantization settings to fuse a LoRA into it")
    return (w.shape[0], w.shape[1] * 32 // quantization["bits"])


def _fuse_dense(weights, key, hits):
    w = weights[key]
    dtype = w.dtype
    deltas = [_delta(lora, key[: -len(".weight")], dtype) for lora in hits]
    total = deltas[0] if len(deltas) == 1 else sum(d.astype(mx.float32) for d in deltas).astype(dtype)
    weights[key] = (total.astype(mx.float32) + w.astype(mx.float32)).astype(dtype)


def _fuse_quantized(weights, module, hits, q):
    key = module + ".weight"
    mode = q.get("mode", "affine")
    biases = weights.get(module + ".biases")
    dense = mx.dequantize(weights[key], weights[module + ".scales"], biases,
                          group_size=q["group_size"], bits=q["bits"], mode=mode).astype(mx.float32)
    for lora in hits:
        dense = dense + _delta(lora, module, mx.float32)
    packed = mx.quantize(dense.astype(weights[module + ".scales"].dtype), group_size=q["group_size"],
                         bits=q["bits"], mode=mode)
    weights[key], weights[module + ".scales"] = packed[0], packed[1]
    if biases is not None:
        weights[module + ".biases"] = packed[2]
