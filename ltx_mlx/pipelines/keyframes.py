"""Keyframe interpolation: the two-stage pipeline with every image (frame 0 included) appended as a keyframe
at its own frame, so the model interpolates between them."""

from __future__ import annotations

from ..conditioning import image_conditionings_by_adding_guiding_latent
from . import two_stage
from .common import Generation, GenerationResult


def run(g: Generation) -> GenerationResult:
    return two_stage.run(g, image_conditionings=image_conditionings_by_adding_guiding_latent)
