"""Prompts -> the video and audio contexts the LTX transformer consumes.

prompt -> Gemma tokenizer (left padding to 1024) -> Gemma-3 (every hidden state) -> feature extractor
-> video / audio embeddings connectors. Gemma can be freed as soon as the prompts are encoded.
"""

from __future__ import annotations

import gc
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx

from .models.gemma3 import Gemma3TextModel
from .models.text_projection import TextProjection
from .weights.checkpoint import CheckpointError

MAX_LENGTH = 1024  # the reference tokenizes every prompt to exactly this many tokens
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class PromptTokenizer:
    """The Gemma tokenizer from the Gemma folder, configured as the reference uses it."""

    def __init__(self, folder: str | os.PathLike, max_length: int = MAX_LENGTH, gemma_config=None):
        folder = Path(folder)
        if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
            raise CheckpointError(f"{folder} has no Gemma tokenizer (tokenizer.json or tokenizer.model): download "
                                  "the tokenizer files of google/gemma-3-12b-it-qat-q4_0-unquantized into it")
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=max_length)
        except Exception as e:  # transformers raises many types for unreadable tokenizer files
            reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise CheckpointError(f"could not load the Gemma tokenizer from {folder}: {reason}") from None
        if gemma_config is not None:
            check_tokenizer_matches(tok, gemma_config, folder)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if tok.pad_token is None:
            raise CheckpointError(f"the tokenizer in {folder} defines neither a pad nor an EOS token")
        self.tokenizer = tok
        self.max_length = max_length

    def __call__(self, prompts: str | list[str]) -> tuple[mx.array, mx.array]:
        """(input_ids, attention_mask), both `(B, max_length)` int32, left-padded; BOS as the tokenizer adds it."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        texts = [p.strip() for p in prompts]
        for text in texts:
            n = len(self.tokenizer(text, verbose=False)["input_ids"])
            if n > self.max_length:
                warnings.warn(f"prompt is {n} tokens long; only the first {self.max_length} are used "
                              f"(it begins {text[:60]!r})", stacklevel=2)
        enc = self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="np")
        return mx.array(enc["input_ids"].astype("int32")), mx.array(enc["attention_mask"].astype("int32"))


def check_tokenizer_matches(tok, cfg, folder) -> None:
    """A tokenizer of another model must fail loudly: it would silently turn every prompt into noise."""
    fix = "it belongs to another model; use the tokenizer files of the Gemma-3 folder"
    if len(tok) > cfg.vocab_size:
        raise CheckpointError(f"the tokenizer in {folder} has {len(tok)} tokens but the Gemma model only "
                              f"{cfg.vocab_size}: {fix}")
    if tok.bos_token_id != cfg.bos_token_id:
        raise CheckpointError(f"the tokenizer in {folder} has BOS id {tok.bos_token_id}, Gemma's config "
                              f"{cfg.bos_token_id}: {fix}")


@dataclass
class TextContext:
    """What the transformer consumes for one prompt (the reference's EmbeddingsProcessorOutput)."""

    video: mx.array  # (1, T, video context dim)
    audio: mx.array  # (1, T, audio context dim)
    mask: mx.array  # (1, T), all ones: registers fill the pads, so the transformer sees no mask


class TextEncoder:
    """Gemma-3 + tokenizer + the LTX text projection (feature extractor and connectors).

    The projection (1.4 B parameters for LTX-2, 3.2 B for LTX-2.3) is read from the checkpoint only when
    first needed, so that with `free_gemma` it never shares memory with Gemma's 12 B.
    """

    def __init__(self, gemma: Gemma3TextModel, tokenizer: PromptTokenizer,
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
