"""Attention perturbations: what a guidance pass asks the transformer to switch off (STG, modality isolation).

The guiders decide which passes need which perturbations; the transformer applies them per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Iterable, Sequence

import mlx.core as mx


class PerturbationType(Enum):
    SKIP_A2V_CROSS_ATTN = "skip_a2v_cross_attn"
    SKIP_V2A_CROSS_ATTN = "skip_v2a_cross_attn"
    SKIP_VIDEO_SELF_ATTN = "skip_video_self_attn"
    SKIP_AUDIO_SELF_ATTN = "skip_audio_self_attn"


@dataclass(frozen=True)
class Perturbation:
    """Skip one kind of attention in `blocks` (None: in every block)."""

    type: PerturbationType
    blocks: tuple[int, ...] | None = None

    def is_perturbed(self, perturbation_type: PerturbationType, block: int) -> bool:
        return self.type == perturbation_type and (self.blocks is None or block in self.blocks)


def is_perturbed(perturbations: Iterable[Perturbation] | None, perturbation_type: PerturbationType, block: int) -> bool:
    """Whether any perturbation in the collection skips `perturbation_type` in `block`."""
    return any(p.is_perturbed(perturbation_type, block) for p in perturbations or ())


class Perturbations:
    """Per-sample perturbation lists for a batch: `Perturbations([[...], [...]])`."""

    def __init__(self, per_sample: Sequence[Sequence[Perturbation]]):
        self.per_sample = [tuple(p) for p in per_sample]

    def skipped(self, perturbation_type: PerturbationType, block: int) -> list[bool]:
        return [is_perturbed(ps, perturbation_type, block) for ps in self.per_sample]

    def keep_mask(self, perturbation_type: PerturbationType, block: int, dtype) -> tuple[bool, mx.array | None]:
        """(every sample skips, `(B, 1, 1)` 0/1 keep mask when only some do)."""
        flags = self.skipped(perturbation_type, block)
        if not any(flags) or all(flags):
            return all(flags), None
        return False, mx.array([0.0 if f else 1.0 for f in flags], dtype=dtype)[:, None, None]
