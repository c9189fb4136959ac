"""Attention perturbations a guidance pass asks the transformer for (STG and modality isolation)."""

from dataclasses import dataclass
from enum import Enum


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
        if self.type != perturbation_type:
            return False
        return self.blocks is None or block in self.blocks


def is_perturbed(perturbations, perturbation_type: PerturbationType, block: int) -> bool:
    """Whether any perturbation in the collection skips `perturbation_type` in `block`."""
    return any(p.is_perturbed(perturbation_type, block) for p in perturbations or ())
