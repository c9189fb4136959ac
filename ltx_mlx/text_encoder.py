"""Prompts -> the video and audio contexts the LTX transformer consumes.

prompt -> Gemma tokenizer (tokenizer.json, left padding to 1024) -> Gemma-3 (every hidden state) -> feature extractor
-> video / audio embeddings connectors. Gemma can be freed as soon as the prompts are encoded.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Callable

import mlx.core as mx

from .models.gemma3 import Gemma3TextModel
from .models.text_projection import TextProjection

MAX_LENGTH = 1024  # the reference tokenizes every prompt to exactly this many tokens


@dataclass
class TextContext:
    """What the transformer consumes for one prompt (the reference's EmbeddingsProcessorOutput)."""

    video: mx.array  # (1, T, video context dim)
    audio: mx.array  # (1, T, audio context dim)
    mask: mx.array  # (1, T), all ones: registers fill the pads, so the transformer sees no mask


class TextEncoder:
    """Gemma-3 + tokenizer (prompt -> left-padded ids and mask, `weights.tokenizer.PromptTokenizer`) + the LTX
    text projection (feature extractor and connectors).

    The projection (1.4 B parameters for LTX-2, 3.2 B for LTX-2.3) is read from the checkpoint only when
    first needed, so that with `free_gemma` it never shares memory with Gemma's 12 B.
    """

    def __init__(self, gemma: Gemma3TextModel, tokenizer: Callable[[str], tuple[mx.array, mx.array]],
                 projection: TextProjection | Callable[[], TextProjection]):
        self.gemma, self.tokenizer, self._projection = gemma, tokenizer, projection

    @property
    def projection(self) -> TextProjection:
        if callable(self._projection) and not isinstance(self._projection, TextProjection):
            self._projection = self._projection()
        return self._projection

    def hidden_states(self, prompt: str) -> tuple[list[mx.array], mx.array]:
        if self.gemma is None:
            raise RuntimeError("Gemma was freed (free_gemma); load the text encoder again to encode more prompts")
        ids, mask = self.tokenizer(prompt)
        states = self.gemma(ids, mask, eval_each_layer=True)
        mx.eval(states)
        return states, mask

    def encode(self, prompts: list[str], free_gemma: bool = False) -> list[TextContext]:
        """One context per prompt: Gemma runs one prompt at a time (as the reference does), then the projection."""
        raw = [self.hidden_states(p) for p in prompts]
        if free_gemma:
            self.free_gemma()
        out = []
        for states, mask in raw:
            video, audio, ones = self.projection(states, mask)
            mx.eval(video, audio, ones)
            out.append(TextContext(video, audio, ones))
        return out

    def free_gemma(self):
        self.gemma = None
        gc.collect()
        mx.clear_cache()


def encode_prompts(prompt: str, negative_prompt: str | None, encoder: TextEncoder,
                   free_gemma: bool = True) -> tuple[TextContext, TextContext | None]:
    """Encode the positive (and optional negative) prompt for one generation.

    An empty positive prompt is an error; an empty negative prompt is allowed, as in the reference
    (`retake` defaults to ""), and encodes to the BOS token alone. With `free_gemma`, Gemma's weights are
    released as soon as the prompts have run through it, before the projection is loaded.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: describe the video to generate (e.g. --prompt \"a cat on a beach\")")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ValueError(f"negative_prompt must be a string or None, not {type(negative_prompt).__name__}")
    prompts = [prompt] if negative_prompt is None else [prompt, negative_prompt]
    contexts = encoder.encode(prompts, free_gemma=free_gemma)
    return contexts[0], (contexts[1] if negative_prompt is not None else None)
