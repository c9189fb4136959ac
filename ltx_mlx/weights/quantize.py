"""Weight quantization (mlx-lm style): which layers, at which settings, recorded so a load can rebuild them.

Only the big matmuls are quantized: the Linear layers inside the DiT's `transformer_blocks` (attention
projections and feed-forwards) and Gemma's decoder layers. Norms, AdaLN and timestep embeddings,
patchify/output projections, the per-head gate logits, VAEs, vocoders and upsamplers stay as they are.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

MODES = ("affine", "mxfp4", "mxfp8", "nvfp4")
# The settings tests/test_quantization_quality.py measures: mode -> (bits, group sizes).
SUPPORTED = {"affine": ((4, 8), (32, 64, 128)), "mxfp4": ((4,), (32,)), "mxfp8": ((8,), (32,)),
             "nvfp4": ((4,), (16,))}


@dataclass
class QuantizationPlan:
    bits: int = 4
    group_size: int = 64
    mode: str = "affine"
    high_bits: int | None = None      # mixed precision: these bits for the first/last `edge_blocks` blocks
    edge_blocks: int = 0
    overrides: dict[str, dict] = field(default_factory=dict)  # filled by `quantize_model`: path -> settings

    def validate(self):
        if self.mode not in MODES:
            raise ValueError(f"quantization mode {self.mode!r} is not one of {MODES}")
        bits, groups = SUPPORTED[self.mode]
        for flag, value in (("--q-bits", self.bits), ("--q-high-bits", self.high_bits)):
            if value is not None and value not in bits:
                raise ValueError(f"{flag} {value} is not supported with mode {self.mode}; "
                                 f"use {' or '.join(map(str, bits))}")
        if self.group_size not in groups:
            raise ValueError(f"--q-group-size {self.group_size} is not supported with mode {self.mode}; "
                             f"use {' or '.join(map(str, groups))}")

    def as_config(self) -> dict:
        """The `quantization` entry of a converted folder's config.json."""
        return {"group_size": self.group_size, "bits": self.bits, "mode": self.mode, **self.overrides}


_BLOCK = re.compile(r"^(?:transformer_blocks|layers)\.(\d+)\.")


def transformer_block_linears(path: str, module: nn.Module) -> bool:
    """The DiT's quantizable layers: Linear layers inside transformer blocks, except the tiny gate logits."""
    return (isinstance(module, nn.Linear) and path.startswith("transformer_blocks.")
            and not path.endswith("to_gate_logits"))


def decoder_layer_linears(path: str, module: nn.Module) -> bool:
    """Gemma's quantizable layers: the Linear layers of its decoder layers."""
    return isinstance(module, nn.Linear) and bool(re.search(r"(^|\.)layers\.\d+\.", path))


def quantize_model(model: nn.Module, plan: QuantizationPlan, select=transformer_block_linears) -> QuantizationPlan:
    """Quantize `model` in place where `select(path, module)` holds and the shapes allow; returns a copy of
    the plan with per-layer overrides (mixed precision, and layers left unquantized because of their shape)."""
    plan.validate()
    plan = dataclasses.replace(plan, overrides=dict(plan.overrides))
    num_blocks = 1 + max((int(m.group(1)) for p, _ in model.named_modules() if (m := _BLOCK.match(p + "."))),
                         default=-1)
    chosen = {}
    for path, module in model.named_modules():
        if not select(path, module):
            continue
        in_dim = module.weight.shape[-1]
        if in_dim % plan.group_size:
            plan.overrides[path] = False
            continue
        settings = {"group_size": plan.group_size, "bits": plan.bits, "mode": plan.mode}
        block = _BLOCK.match(path)
        if plan.high_bits and block and (int(block.group(1)) < plan.edge_blocks
                                         or int(block.group(1)) >= num_blocks - plan.edge_blocks):
            settings["bits"] = plan.high_bits
            plan.overrides[path] = dict(settings)
        chosen[path] = settings
    nn.quantize(model, class_predicate=lambda p, m: chosen.get(p, False))
    return plan


def quantize_like_saved(model: nn.Module, weights: dict[str, mx.array], qconfig: dict | None,
                        component: str = "model"):
    """Before loading a converted component: quantize exactly the layers whose `.scales` were saved, after
    checking that config.json's quantization entry agrees with the stored tensors."""
    check_saved_quantization(model, weights, qconfig, component)
    if not qconfig:
        return
    default = {k: qconfig[k] for k in ("group_size", "bits", "mode") if k in qconfig}

    def predicate(path, module):
        if f"{path}.scales" not in weights or not hasattr(module, "to_quantized"):
            return False
        override = qconfig.get(path)
        return dict(override) if isinstance(override, dict) else dict(default)

    nn.quantize(model, class_predicate=predicate)


def check_saved_quantization(model: nn.Module, weights: dict[str, mx.array], qconfig: dict | None, component: str):
    """config.json's quantization entry and the stored `.weight`/`.scales` shapes must tell the same story."""
    from .checkpoint import CheckpointError

    fix = "the converted folder is inconsistent: convert the model again"
    stored = sorted(k[: -len(".scales")] for k in weights if k.endswith(".scales"))
    if not qconfig:
        if stored:
            raise CheckpointError(f"{component}: {len(stored)} stored layers are quantized (e.g. {stored[0]}.scales) "
                                  f"but config.json has no quantization entry for {component}; {fix}")
        return
    if not stored:
        raise CheckpointError(f"{component}: config.json records {qconfig.get('bits')}-bit quantization but no stored "
                              f"tensor is quantized (no .scales); {fix}")
    modules = dict(model.named_modules())
    for path in stored:
        module = modules.get(path)
        settings = qconfig.get(path, qconfig)
        if module is None or not hasattr(module, "to_quantized") or not isinstance(settings, dict):
            raise CheckpointError(f"{component}: {path} is stored quantized, but config.json does not quantize it "
                                  f"(or it is not a quantizable layer); {fix}")
        bits, group = settings.get("bits"), settings.get("group_size")
        in_dim = module.weight.shape[-1]
        packed, scales = weights[path + ".weight"].shape[-1], weights[path + ".scales"].shape[-1]
        if not bits or not group or (packed, scales) != (in_dim * bits // 32, in_dim // group):
            raise CheckpointError(
                f"{component}: config.json says {bits}-bit, group size {group} for {path}, but its stored tensors "
                f"(weight {packed} packed words, {scales} scales per row for {in_dim} inputs) were quantized with "
                f"other settings; {fix}")


def quantized_layers(model: nn.Module) -> dict[str, int]:
    """path -> bits of every quantized layer (for assertions and reports)."""
    return {p: m.bits for p, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}


def parameter_bytes(model: nn.Module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))
