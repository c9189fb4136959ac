"""The official generation pipelines on MLX: distilled (default), one-stage, two-stage, hq, keyframes, a2v
(audio-to-video) and retake (regenerate a time range of a video)."""

from .params import (DEFAULT_NEGATIVE_PROMPT, LTX_2_3_HQ_PARAMS, LTX_2_3_PARAMS, LTX_2_PARAMS, PIPELINES,
                     PipelineParams, detect_params)

__all__ = ["DEFAULT_NEGATIVE_PROMPT", "LTX_2_3_HQ_PARAMS", "LTX_2_3_PARAMS", "LTX_2_PARAMS", "PIPELINES",
           "PipelineParams", "detect_params"]
