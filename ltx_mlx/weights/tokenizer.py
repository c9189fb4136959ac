"""The Gemma tokenizer of a Gemma-3 folder, read with the `tokenizers` library (no transformers, no torch) and set
up as the reference's tokenizer uses it: left padding to exactly `max_length` tokens, BOS as Gemma adds it."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import mlx.core as mx
import numpy as np
from tokenizers import AddedToken, Tokenizer, pre_tokenizers, processors

from ..text_encoder import MAX_LENGTH
from .checkpoint import CheckpointError

GEMMA_TOKENIZER_SOURCE = "google/gemma-3-12b-it-qat-q4_0-unquantized"
# transformers' special-token attributes in its order (it adds missing ones to the vocabulary in this order)
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_GEMMA_DEFAULTS = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token(value):
    """A special-token value from a config file: None, a string, or an AddedToken (written as a dict)."""
    if isinstance(value, dict):
        return AddedToken(**{k: v for k, v in value.items() if k != "__type"})
    return value


def _as_special(t: AddedToken) -> AddedToken:
    return AddedToken(t.content, single_word=t.single_word, lstrip=t.lstrip, rstrip=t.rstrip,
                      normalized=t.normalized, special=True)


def check_tokenizer_files(folder: Path) -> None:
    """The Gemma tokenizer must be there as tokenizer.json: a one-line error naming the fix otherwise."""
    if (folder / "tokenizer.json").is_file():
        return
    if (folder / "tokenizer.model").is_file():
        raise CheckpointError(f"{folder} has the Gemma tokenizer only as tokenizer.model (sentencepiece), and "
                              f"ltx-mlx reads tokenizer.json: download tokenizer.json of {GEMMA_TOKENIZER_SOURCE} "
                              "into it")
    raise CheckpointError(f"{folder} has no Gemma tokenizer (tokenizer.json): download the tokenizer files of "
                          f"{GEMMA_TOKENIZER_SOURCE} into it")


def _load_tokenizer(folder: Path) -> tuple[Tokenizer, dict, dict]:
    """tokenizer.json set up as transformers' AutoTokenizer sets up a Gemma folder (GemmaTokenizerFast): the
    folder's added and special tokens joined to the vocabulary, and BOS (and EOS if asked) added by a template."""
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    cfg = _read_json(folder / "tokenizer_config.json")
    kind = cfg.get("tokenizer_class")
    gemma = kind is None or kind.replace("Fast", "") == "GemmaTokenizer"
    if not gemma and kind != "PreTrainedTokenizerFast":
        raise CheckpointError(f"the tokenizer in {folder} is a {kind}, not a Gemma tokenizer: use the tokenizer "
                              f"files of {GEMMA_TOKENIZER_SOURCE}")
    special = {k: _token(cfg.get(k, _GEMMA_DEFAULTS.get(k) if gemma else None)) for k in _SPECIAL_KEYS}
    additional = [_token(t) for t in cfg.get("additional_special_tokens") or []]
    present = tok.get_added_tokens_decoder()
    decoder: dict[int, AddedToken] = {}
    if "added_tokens_decoder" in cfg:
        decoder = {int(i): AddedToken(**t) for i, t in cfg["added_tokens_decoder"].items()}
    else:  # older folders: special_tokens_map.json takes precedence, added_tokens.json lists extra tokens
        for k, v in _read_json(folder / "special_tokens_map.json").items():
            if k == "additional_special_tokens":
                additional += [t for t in map(_token, v) if t not in additional]
            elif k in special:
                special[k] = _token(v)
        names = {str(v) for v in [*special.values(), *additional] if v is not None}
        for content, i in _read_json(folder / "added_tokens.json").items():
            decoder[i] = AddedToken(content, normalized=content not in names, special=content in names)
        decoder.update(present)
    by_content = {t.content: t for t in decoder.values()}
    if by_content:
        special = {k: None if v is None else by_content.get(str(v), v) for k, v in special.items()}
    extra = [_token(v) for v in (cfg.get("extra_special_tokens") or {}).values()]
    names = {str(v) for v in [*special.values(), *additional, *extra] if v is not None}

    have = {repr(t) for t in present.values()}
    to_add = [_as_special(t) if t.content in names else t for _, t in sorted(decoder.items()) if repr(t) not in have]
    known = {t.content for t in present.values()} | {t.content for t in to_add}
    seen = set()
    for v in [*special.values(), *additional, *extra]:
        if v is None or str(v) in seen:
            continue
        seen.add(str(v))
        if isinstance(v, AddedToken):
            to_add.append(_as_special(v))
        elif v not in known:
            to_add.append(AddedToken(v, special=True))
            known.add(v)
    if to_add:
        tok.add_tokens(to_add)
    tok.encode_special_tokens = bool(cfg.get("split_special_tokens", False))
    _set_prefix_space(tok, bool(cfg.get("add_prefix_space", False)))

    special = {k: None if v is None else str(v) for k, v in special.items()}
    flags = {"add_bos": cfg.get("add_bos_token", True), "add_eos": cfg.get("add_eos_token", False),
             "truncation_side": cfg.get("truncation_side", "right"), "gemma": gemma}
    return tok, special, flags


def _set_prefix_space(tok: Tokenizer, add_prefix_space: bool) -> None:
    # transformers rebuilds a pre-tokenizer whose add_prefix_space differs from the config's (default False)
    try:
        state = json.loads(tok.pre_tokenizer.__getstate__())
    except Exception:  # no pre-tokenizer, or one that cannot be serialised: transformers leaves it too
        return
    if state.get("add_prefix_space", add_prefix_space) != add_prefix_space:
        cls = getattr(pre_tokenizers, state.pop("type"))
        tok.pre_tokenizer = cls(**{**state, "add_prefix_space": add_prefix_space})


class PromptTokenizer:
    """The Gemma tokenizer from the Gemma folder's tokenizer.json, configured as the reference uses it.

    Same ids and mask as the reference's transformers AutoTokenizer (`tokenizers` alone, no transformers, no
    torch): prompts stripped, BOS added by the Gemma tokenizer, truncated and left-padded to `max_length`, pad
    id the pad token's (else EOS's).
    """

    def __init__(self, folder: str | os.PathLike, max_length: int = MAX_LENGTH, gemma_config=None):
        folder = Path(folder)
        check_tokenizer_files(folder)
        try:
            tok, special, flags = _load_tokenizer(folder)
        except CheckpointError:
            raise
        except Exception as e:  # tokenizers raises plain Exceptions for unreadable files
            reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise CheckpointError(f"could not load the Gemma tokenizer from {folder}: {reason}") from None
        self.tokenizer, self.max_length, self._truncation_side = tok, max_length, flags["truncation_side"]
        self._unk = special["unk_token"]
        self.bos_token_id = self._id(special["bos_token"])
        if gemma_config is not None:
            check_tokenizer_matches(self, gemma_config, folder)
        if flags["gemma"]:
            self._template(special, flags["add_bos"], flags["add_eos"], folder)
        self.pad_token = special["pad_token"] or special["eos_token"]
        if self.pad_token is None:
            raise CheckpointError(f"the tokenizer in {folder} defines neither a pad nor an EOS token")
        self.pad_token_id = self._id(self.pad_token)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _id(self, token: str | None) -> int | None:
        if token is None:
            return None
        i = self.tokenizer.token_to_id(token)
        return i if i is not None or self._unk is None else self.tokenizer.token_to_id(self._unk)

    def _template(self, special: dict, add_bos: bool, add_eos: bool, folder: Path) -> None:
        bos, eos = special["bos_token"], special["eos_token"]
        if (add_bos and bos is None) or (add_eos and eos is None):
            raise CheckpointError(f"the tokenizer config in {folder} asks for a BOS/EOS token it does not define")
        ends = [(bos, add_bos), (eos, add_eos)]
        single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
        pair = single + " " + " ".join([f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos)
        self.tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, self._id(t)) for t, on in ends if on])

    def _count(self, text: str) -> int:
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        return len(self.tokenizer.encode(text).ids)

    def __call__(self, prompts: str | list[str]) -> tuple[mx.array, mx.array]:
        """(input_ids, attention_mask), both `(B, max_length)` int32, left-padded; BOS as the tokenizer adds it."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        texts = [p.strip() for p in prompts]
        for text in texts:
            n = self._count(text)
            if n > self.max_length:
                warnings.warn(f"prompt is {n} tokens long; only the first {self.max_length} are used "
                              f"(it begins {text[:60]!r})", stacklevel=2)
        tok = self.tokenizer
        tok.enable_truncation(self.max_length, stride=0, strategy="longest_first", direction=self._truncation_side)
        tok.enable_padding(direction="left", pad_id=self.pad_token_id, pad_type_id=0, pad_token=self.pad_token,
                           length=self.max_length)
        encodings = tok.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int32)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int32)
        return mx.array(ids), mx.array(mask)


def check_tokenizer_matches(tok, cfg, folder) -> None:
    """A tokenizer of another model must fail loudly: it would silently turn every prompt into noise."""
    fix = "it belongs to another model; use the tokenizer files of the Gemma-3 folder"
    if len(tok) > cfg.vocab_size:
        raise CheckpointError(f"the tokenizer in {folder} has {len(tok)} tokens but the Gemma model only "
                              f"{cfg.vocab_size}: {fix}")
    if tok.bos_token_id != cfg.bos_token_id:
        raise CheckpointError(f"the tokenizer in {folder} has BOS id {tok.bos_token_id}, Gemma's config "
                              f"{cfg.bos_token_id}: {fix}")
