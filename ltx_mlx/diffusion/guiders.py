"""Guidance on x0 predictions: the multi-modal guider the pipelines use (the reference's single CFG / STG / APG
guiders are not ported: no pipeline of the reference uses them), and the description of which transformer passes
a guided step needs.

A guided denoising function is `guided_denoising_fn(model_fn, video_guider, audio_guider)`; `model_fn`
runs the transformer for a list of `GuidancePass`es (it may batch them when that gives the same
result) and returns one `(x0_video, x0_audio)` per pass.
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import mlx.core as mx

from ..models.perturbations import Perturbation, PerturbationType
from .stats import centred_std


def _std(x: mx.array) -> mx.array:
    # Whole-tensor unbiased std in float32 like torch's `Tensor.std()`, rounded to x's dtype.
    return centred_std(x.astype(mx.float32))[1].astype(x.dtype)


@dataclass(frozen=True)
class MultiModalGuiderParams:
    cfg_scale: float = 1.0
    stg_scale: float = 0.0
    stg_blocks: list[int] | None = field(default_factory=list)
    rescale_scale: float = 0.0
    modality_scale: float = 1.0
    skip_step: int = 0


@dataclass(frozen=True)
class MultiModalGuider:
    """CFG + STG + modality-isolation guidance with optional std rescale, for one modality."""

    params: MultiModalGuiderParams = field(default_factory=MultiModalGuiderParams)

    def calculate(self, cond: mx.array, uncond_text, uncond_perturbed, uncond_modality) -> mx.array:
        p = self.params
        pred = (
            cond
            + (p.cfg_scale - 1) * (cond - uncond_text)
            + p.stg_scale * (cond - uncond_perturbed)
            + (p.modality_scale - 1) * (cond - uncond_modality)
        )
        if p.rescale_scale != 0:
            factor = _std(cond) / _std(pred)
            pred = pred * (p.rescale_scale * factor + (1 - p.rescale_scale))
        return pred

    def do_unconditional_generation(self) -> bool:
        return not math.isclose(self.params.cfg_scale, 1.0)

    def do_perturbed_generation(self) -> bool:
        return not math.isclose(self.params.stg_scale, 0.0)

    def do_isolated_modality_generation(self) -> bool:
        return not math.isclose(self.params.modality_scale, 1.0)

    def should_skip_step(self, step: int) -> bool:
        return self.params.skip_step != 0 and step % (self.params.skip_step + 1) != 0


@dataclass(frozen=True)
class MultiModalGuiderFactory:
    """Guider params binned by sigma: a bin's key is its upper bound, the smallest key >= sigma wins."""

    params_by_sigma: tuple[tuple[float, MultiModalGuiderParams], ...]

    @classmethod
    def constant(cls, params: MultiModalGuiderParams) -> "MultiModalGuiderFactory":
        return cls(((float("inf"), params),))

    @classmethod
    def from_dict(cls, sigma_to_params: Mapping[float, MultiModalGuiderParams]) -> "MultiModalGuiderFactory":
        if not sigma_to_params:
            raise ValueError("sigma_to_params must be non-empty: give at least one {sigma: MultiModalGuiderParams}.")
        return cls(tuple(sorted(sigma_to_params.items(), key=lambda kv: kv[0], reverse=True)))

    def params(self, sigma: float) -> MultiModalGuiderParams:
        sigma = float(sigma)
        at_or_above = [k for k, _ in self.params_by_sigma if k >= sigma]
        key = at_or_above[-1] if at_or_above else self.params_by_sigma[0][0]
        return next(p for k, p in self.params_by_sigma if k == key)

    def build_from_sigma(self, sigma: float) -> MultiModalGuider:
        return MultiModalGuider(self.params(sigma))


def as_guider_factory(guider) -> MultiModalGuiderFactory:
    """Accept params, a guider or a factory; return a factory."""
    if isinstance(guider, MultiModalGuiderFactory):
        return guider
    if isinstance(guider, MultiModalGuider):
        return MultiModalGuiderFactory.constant(guider.params)
    if isinstance(guider, MultiModalGuiderParams):
        return MultiModalGuiderFactory.constant(guider)
    raise ValueError(
        f"Expected MultiModalGuiderParams, MultiModalGuider or MultiModalGuiderFactory, got {type(guider).__name__}."
    )


@dataclass(frozen=True)
class GuidancePass:
    """One transformer forward pass of a guided step.

    `negative`: use the negative prompt contexts for both modalities (the reference falls back to the
    positive context of a modality that has none). `perturbations`: attention to skip. A modality that
    is not `enabled` is passed through the blocks unchanged (its guider skips this step); passes may be
    batched by `model_fn` only where that gives the same result as running them separately.
    """

    name: str
    negative: bool = False
    perturbations: tuple[Perturbation, ...] = ()
    video_enabled: bool = True
    audio_enabled: bool = True


COND, NEGATIVE, PERTURBED, ISOLATED = "cond", "negative", "perturbed", "isolated"


def _blocks(params: MultiModalGuiderParams):
    return None if params.stg_blocks is None else tuple(params.stg_blocks)


def guidance_passes(video_guider: MultiModalGuider, audio_guider: MultiModalGuider, step_index: int) -> list:
    """The forward passes a step needs, in the reference's order; empty when both guiders skip it."""
    skip_v, skip_a = video_guider.should_skip_step(step_index), audio_guider.should_skip_step(step_index)
    if skip_v and skip_a:
        return []
    on = dict(video_enabled=not skip_v, audio_enabled=not skip_a)
    passes = [GuidancePass(COND, **on)]
    if video_guider.do_unconditional_generation() or audio_guider.do_unconditional_generation():
        passes.append(GuidancePass(NEGATIVE, negative=True))
    stg = []
    if video_guider.do_perturbed_generation():
        stg.append(Perturbation(PerturbationType.SKIP_VIDEO_SELF_ATTN, _blocks(video_guider.params)))
    if audio_guider.do_perturbed_generation():
        stg.append(Perturbation(PerturbationType.SKIP_AUDIO_SELF_ATTN, _blocks(audio_guider.params)))
    if stg:
        passes.append(GuidancePass(PERTURBED, perturbations=tuple(stg), **on))
    if video_guider.do_isolated_modality_generation() or audio_guider.do_isolated_modality_generation():
        cross = (
            Perturbation(PerturbationType.SKIP_A2V_CROSS_ATTN, None),
            Perturbation(PerturbationType.SKIP_V2A_CROSS_ATTN, None),
        )
        passes.append(GuidancePass(ISOLATED, perturbations=cross, **on))
    return passes


def combine_guidance(video_guider, audio_guider, outputs: Mapping, step_index: int, last=(None, None)):
    """Guided (x0_video, x0_audio) from the passes' outputs {name: (x0_video, x0_audio)}.

    A modality whose guider skips this step reuses its x0 from `last`; passes not run count as 0.
    """
    result = []
    for m, guider in enumerate((video_guider, audio_guider)):
        if guider.should_skip_step(step_index):
            result.append(last[m])
            continue
        cond = outputs[COND][m]
        others = [outputs[name][m] if name in outputs else 0.0 for name in (NEGATIVE, PERTURBED, ISOLATED)]
        result.append(guider.calculate(cond, *others))
    return tuple(result)


ModelFn = Callable  # (video_state, audio_state, sigma: float, passes: list[GuidancePass]) -> [(x0_v, x0_a), ...]


def guided_denoising_fn(model_fn: ModelFn, video_guider, audio_guider=None):
    """A denoise function for the samplers that runs the needed passes and applies multi-modal guidance.

    Guiders may be params, guiders or sigma-binned factories; `audio_guider=None` reuses the video one.
    Skipped steps reuse the previous guided x0. A factory's bin is chosen by the sigma being evaluated
    (the reference caches the first call's schedule, so its res_2s midpoint calls would bin by sigmas[0];
    identical for the constant factories every pipeline uses).
    """
    video_factory = as_guider_factory(video_guider)
    audio_factory = as_guider_factory(audio_guider if audio_guider is not None else video_guider)
    last = [None, None]

    def denoise(video_state, audio_state, sigmas, step_index):
        sigma = float(sigmas[step_index])
        vg, ag = video_factory.build_from_sigma(sigma), audio_factory.build_from_sigma(sigma)
        passes = guidance_passes(vg, ag, step_index)
        if not passes:
            return tuple(last)
        results = list(model_fn(video_state, audio_state, sigma, passes))
        if len(results) != len(passes):
            raise ValueError(
                f"model_fn returned {len(results)} outputs for {len(passes)} passes; "
                "return one (x0_video, x0_audio) per pass."
            )
        outputs = dict(zip((p.name for p in passes), results))
        last[:] = combine_guidance(vg, ag, outputs, step_index, last)
        return tuple(last)

    return denoise


def simple_denoising_fn(model_fn: ModelFn):
    """Unguided denoise function: the positive-prompt pass only."""

    def denoise(video_state, audio_state, sigmas, step_index):
        (x0,) = model_fn(video_state, audio_state, float(sigmas[step_index]), [GuidancePass(COND)])
        return x0

    return denoise
