"""Reading Lightricks' official single-file checkpoints, without torch.

An official file is a `.safetensors` whose metadata holds `config` (JSON with the sections
`transformer`, `vae`, `audio_vae`, `vocoder`) and `model_version`. Upsampler files carry a flat
`config` instead. Tensors are read one at a time through a memory map, so a 46 GB checkpoint is
never held in memory whole; bf16 and the fp8 (`F8_E4M3`) tensors of the `-fp8` releases are decoded
here, in one place.
"""

from __future__ import annotations

import json
import os
import re
import struct
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..models.gemma3 import Gemma3Config


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, or not the model we expected."""


_PLAIN_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_ITEM_SIZE = {**{k: np.dtype(v).itemsize for k, v in _PLAIN_DTYPES.items()}, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


@lru_cache(maxsize=None)
def _fp8_table(exp_bits: int, man_bits: int) -> np.ndarray:
    """float32 value of every fp8 byte (E4M3 'fn': no inf, only S.1111.111 is NaN; E5M2: IEEE-like)."""
    bias = (1 << (exp_bits - 1)) - 1
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes >> 7, -1.0, 1.0)
    exp = (codes >> man_bits) & ((1 << exp_bits) - 1)
    man = codes & ((1 << man_bits) - 1)
    normal = (1.0 + man / (1 << man_bits)) * np.exp2(exp - bias)
    subnormal = (man / (1 << man_bits)) * np.exp2(1 - bias)
    values = sign * np.where(exp == 0, subnormal, normal)
    top = (1 << exp_bits) - 1
    if exp_bits == 4:
        values[(exp == top) & (man == (1 << man_bits) - 1)] = np.nan
    else:
        values[(exp == top) & (man == 0)] = sign[(exp == top) & (man == 0)] * np.inf
        values[(exp == top) & (man != 0)] = np.nan
    return values.astype(np.float32)


class SafetensorsFile:
    """Lazy reader of one safetensors file: header and metadata up front, tensors on request."""

    def __init__(self, path: str | os.PathLike, converted: bool = False):
        """`converted`: a shard of a converted folder, whose fix is to convert again rather than re-download."""
        self.path = os.fspath(path)
        fix = "convert the model again" if converted else "re-download it"
        if not os.path.isfile(self.path):
            raise CheckpointError(f"checkpoint not found: {self.path}")
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{self.path} is empty or truncated: not a safetensors file; {fix}")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > size - 8 or n > 100_000_000:
                raise CheckpointError(f"{self.path} is not a safetensors file, or it is truncated (header of {n} bytes "
                                      f"in a file of {size} bytes); {fix}")
            try:
                header = json.loads(f.read(n))
                if not isinstance(header, dict):
                    raise ValueError("the header is not a JSON object")
            except (UnicodeDecodeError, ValueError) as e:
                raise CheckpointError(f"{self.path}: corrupt safetensors header ({e}); {fix}") from None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        data_size = size - self._data_start
        self._entries = {}
        for key, info in header.items():
            try:
                dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            except (TypeError, KeyError, ValueError):
                raise CheckpointError(f"{self.path}: corrupt safetensors header (entry {key!r}); {fix}") from None
            if dtype not in _ITEM_SIZE:
                raise CheckpointError(f"{self.path}: tensor {key!r} has unsupported dtype {dtype}")
            if end > data_size or end - begin != _ITEM_SIZE[dtype] * int(np.prod(shape, dtype=np.int64)):
                raise CheckpointError(f"{self.path} is truncated or corrupt: tensor {key!r} lies past the end of "
                                      f"the file ({end} > {data_size} data bytes); {fix}")
            self._entries[key] = (dtype, shape, begin, end)
        self._map = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][1]

    def dtype(self, key: str) -> str:
        """The safetensors dtype string, e.g. 'BF16', 'F8_E4M3'."""
        return self._entries[key][0]

    def nbytes(self, key: str) -> int:
        _, _, begin, end = self._entries[key]
        return end - begin

    def _raw(self, key: str) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start)
        _, _, begin, end = self._entries[key]
        return self._map[begin:end]

    def get(self, key: str, dtype: mx.Dtype | None = None) -> mx.array:
        """One tensor as an mx.array (fp8 decoded to float32 unless `dtype` says otherwise)."""
        if key not in self._entries:
            raise CheckpointError(f"{self.path}: no tensor named {key!r}")
        st_dtype, shape, _, _ = self._entries[key]
        raw = self._raw(key)
        if st_dtype == "BF16":
            out = mx.array(raw.view(np.uint16).reshape(shape)).view(mx.bfloat16)
        elif st_dtype in ("F8_E4M3", "F8_E5M2"):
            table = _fp8_table(4, 3) if st_dtype == "F8_E4M3" else _fp8_table(5, 2)
            out = mx.array(table[raw].reshape(shape))
        else:
            out = mx.array(np.array(raw.view(_PLAIN_DTYPES[st_dtype]).reshape(shape)))
        return out if dtype is None else out.astype(dtype)

    def config(self) -> dict:
        """The metadata `config` JSON (empty dict when the file has none)."""
        text = self.metadata.get("config")
        if text is None:
            return {}
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{self.path}: metadata 'config' is not valid JSON ({e})") from None


def is_ltx_2_3(model_version: str | None) -> bool:
    """The reference's pipeline-default switch: metadata model_version starting with '2.3'."""
    return bool(model_version) and model_version.startswith("2.3")


DISTILLED_OR_DEV = ("distilled", "dev")


def checkpoint_kind(path: str | os.PathLike, given: str | None = None) -> str | None:
    """'distilled' or 'dev': as given, else as the official file name says (ltx-2.3-22b-distilled…, ltx-2-19b-dev…).
    The official files cannot tell: their metadata holds only `config` and `model_version` (and the fp8 files'
    `_quantization_metadata`), the same keys for both kinds. None when the name does not say (or says both)."""
    if given is not None:
        if given not in DISTILLED_OR_DEV:
            raise ValueError(f"checkpoint kind {given!r} is not one of {', '.join(DISTILLED_OR_DEV)}")
        return given
    words = set(re.split(r"[^a-z0-9]+", os.path.basename(os.fspath(path)).lower()))
    named = [k for k in DISTILLED_OR_DEV if k in words]
    return named[0] if len(named) == 1 else None


def official_tensor(sf: SafetensorsFile, key: str, dtype: mx.Dtype) -> mx.array:
    """One official tensor as the reference uses it: fp8 decoded, `weight_scale` folded in, cast to `dtype`."""
    value = sf.get(key)
    scale_key = key[: -len("weight")] + "weight_scale" if key.endswith(".weight") else None
    if scale_key and scale_key in sf:
        value = value.astype(mx.float32) * sf.get(scale_key, mx.float32)
    if mx.issubdtype(value.dtype, mx.floating):
        value = value.astype(dtype)
    return value


def _listing(items, limit=12) -> str:
    items = list(items)
    more = f" … and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(map(str, items[:limit])) + more


def load_strict(model: nn.Module, weights: dict[str, mx.array], component: str) -> nn.Module:
    """Load `weights` into `model`: every parameter must get a tensor of its shape and every tensor a parameter."""
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(f"{k} (model {tuple(expected[k].shape)}, file {tuple(weights[k].shape)})"
                   for k in set(expected) & set(weights) if tuple(expected[k].shape) != tuple(weights[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} with the wrong shape: {_listing(wrong)}")
    if problems:
        raise CheckpointError(f"{component}: the weights do not match the model built from the checkpoint's "
                              f"config — " + "; ".join(problems))
    model.update(tree_unflatten(list(weights.items())))
    return model


def parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a model's parameters, without evaluating them (works at full size)."""
    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


# ---------------------------------------------------------------------------------------------- the Gemma folder


def read_gemma_config(folder: str | os.PathLike) -> Gemma3Config:
    """The text config of a Hugging Face Gemma-3 folder (multimodal `gemma3` or text-only `gemma3_text`)."""
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise CheckpointError(f"Gemma folder not found: {folder}")
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json: pass the Hugging Face folder of Gemma-3 "
                              "(e.g. google/gemma-3-12b-it-qat-q4_0-unquantized)")
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is empty or not valid JSON ({e}); re-download it") from None
    model_type = d.get("model_type")
    if model_type == "gemma3":
        text = dict(d.get("text_config") or {})
    elif model_type == "gemma3_text":
        text = d
    else:
        raise CheckpointError(f"{folder} holds a {model_type!r} model, not Gemma-3 (model_type 'gemma3' or "
                              "'gemma3_text'); LTX-2 needs google/gemma-3-12b-it-qat-q4_0-unquantized")
    if text.get("model_type", "gemma3_text") != "gemma3_text":
        raise CheckpointError(f"{path}: text_config.model_type is {text.get('model_type')!r}, not 'gemma3_text'")
    if "quantization" in d:
        text["quantization"] = d["quantization"]
    try:
        return Gemma3Config.from_dict(text)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def weight_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e}); re-download it") from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{folder}: shards listed in model.safetensors.index.json are missing: "
                                  f"{', '.join(missing)}; finish the download")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} has no *.safetensors weights: download the Gemma-3 weights into it")
    return files
