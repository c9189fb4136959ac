"""`ltx_mlx.load`: a converted model folder (or an official checkpoint, converted once into a cache) whose
components are built on demand and can be freed one by one.

    model = ltx_mlx.load("path/to/ltx-2.3-mlx")          # or "owner/repo", or "ltx-2.3-22b-dev.safetensors"
    dit = model.transformer()                             # LTXModel, LoRAs given to `load` fused in memory
    refine = model.transformer(loras=[model.distilled_lora()])
    model.free("transformer")
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Iterable

import mlx.core as mx
import mlx.nn as nn

from .checkpoint import CheckpointError, SafetensorsFile, load_strict
from .components import build
from .convert import CONFIG_NAME, FORMAT, FORMAT_VERSION, ConvertOptions, convert, quantization_plans
from .lora import LoRA, logical_shape, check_loras, fuse_loras, read_lora
from .folder import read_component, read_index, resolve_path
from .quantize import QuantizationPlan, quantize_like_saved
from .stream import STREAMED, BlockStream, streamed_keys
from ..models.gemma3 import Gemma3Config

LoRASpec = LoRA | str | os.PathLike | tuple


def as_lora(spec: LoRASpec) -> LoRA:
    """A LoRA object from a LoRA, a path / repo id, or (path, strength)."""
    if isinstance(spec, LoRA):
        return spec
    if isinstance(spec, tuple):
        path, strength = spec
        return read_lora(resolve_path(os.fspath(path)), float(strength))
    return read_lora(resolve_path(os.fspath(spec)), 1.0)


def _lora_layer_settings(qconfig: dict | None, module: str) -> dict | None:
    if not qconfig:
        return None
    override = qconfig.get(module)
    if isinstance(override, dict):
        return override
    return {k: qconfig[k] for k in ("group_size", "bits", "mode") if k in qconfig}


def fuse_into(weights: dict[str, mx.array], loras: list[LoRA], qconfig: dict | None,
              unfused: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Fuse LoRAs into converted transformer weights (dense or quantized, each layer with its own settings);
    `unfused` as in `check_loras`. Returns the accepted but unfused (text connector) modules."""
    modules = sorted({m for lr in loras for m in lr.pairs if m + ".weight" in weights})
    shapes = {m: logical_shape(weights, m, _lora_layer_settings(qconfig, m)) for m in modules}
    ignored = check_loras(loras, shapes, unfused)
    for module in modules:
        hits = [LoRA(lr.path, lr.strength, {module: lr.pairs[module]}) for lr in loras if module in lr.pairs]
        part = {k: weights[k] for k in (module + s for s in (".weight", ".scales", ".biases")) if k in weights}
        fuse_loras(part, hits, quantization=_lora_layer_settings(qconfig, module) if module + ".scales" in part else None)
        weights.update(part)
    return ignored


def fuse_block(weights: dict[str, mx.array], loras: list[LoRA], qconfig: dict | None) -> dict[str, mx.array]:
    """`fuse_into` for the weights of one block (low-memory mode): each LoRA cut down to the block's modules,
    so every module goes through the same operations as in a whole-model fusion."""
    cut = [LoRA(lr.path, lr.strength, {m: p for m, p in lr.pairs.items() if m + ".weight" in weights})
           for lr in loras]
    cut = [lr for lr in cut if lr.pairs]
    if cut:
        fuse_into(weights, cut, qconfig)
    return weights


def stream_blocks(model: nn.Module, stream: BlockStream):
    """Attach a block stream to the transformer (`block_stream`) or Gemma (`layer_stream`)."""
    setattr(model, "layer_stream" if stream.prefix == "layers" else "block_stream", stream)


class LTXModelBundle:
    """The components of one converted LTX model; each is built when first asked for and kept until freed."""

    def __init__(self, folder: str | os.PathLike, loras: Iterable[LoRASpec] = ()):
        self.folder = Path(folder)
        path = self.folder / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{self.folder} is not a converted ltx-mlx model (no {CONFIG_NAME}); convert the "
                                  "official checkpoint with convert.py, or pass the .safetensors file itself")
        try:
            self.config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"{path} is empty or not valid JSON ({e}); the converted folder is damaged: "
                                  "convert the model again") from None
        if not isinstance(self.config, dict) or self.config.get("format") != FORMAT or "components" not in self.config:
            fmt = self.config.get("format") if isinstance(self.config, dict) else None
            raise CheckpointError(f"{path} is not an ltx-mlx model config (format {fmt!r}); "
                                  "convert the model with convert.py")
        if self.config.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{self.folder} was converted by another ltx-mlx version (folder format "
                                  f"{self.config.get('format_version', 1)}, this version reads {FORMAT_VERSION}); "
                                  "convert the official checkpoint again")
        self.loras = [as_lora(x) for x in loras]
        self._loaded: dict[tuple, nn.Module] = {}

    @property
    def model_version(self) -> str | None:
        return self.config.get("model_version")

    @property
    def dtype(self) -> str:
        return self.config["dtype"]

    @property
    def components(self) -> list[str]:
        return list(self.config["components"])

    def __contains__(self, name: str) -> bool:
        return name in self.config["components"]

    def _entry(self, name: str) -> dict:
        entry = self.config["components"].get(name)
        if entry is None:
            raise CheckpointError(f"this converted model has no {name} (it has: {', '.join(self.components)}); "
                                  f"convert again with the input that provides it")
        return entry

    def load_component(self, name: str, loras: Iterable[LoRASpec] = (), stream: bool = False) -> nn.Module:
        """Build one component fresh (not cached): config → model → quantize like saved → LoRAs → strict load.

        `stream` (low-memory mode; the transformer and Gemma): only the non-block weights are loaded; each
        block's are read from the folder (LoRAs fused on every read) while it runs, see `weights/stream.py`."""
        entry = self._entry(name)
        kind = entry["kind"]
        if kind == "lora":
            raise ValueError(f"{name} is a LoRA, not a model: use distilled_lora()")
        model = build(kind, entry["config"])
        weights = read_component(self.folder / entry["folder"])
        qconfig = self.config.get("quantization", {}).get(name)
        quantize_like_saved(model, weights, qconfig, name)
        loras = [as_lora(x) for x in loras]
        if loras and kind != "transformer":
            raise ValueError(f"LoRAs apply to the transformer only, not to the {name}")
        stream = stream and kind in STREAMED
        blocks = streamed_keys(weights, kind) if stream else set()
        raw = {k: weights[k] for k in blocks}  # lazy, never evaluated: what the streamed blocks hold between uses
        if loras:
            fuse_into(weights, loras, qconfig, self.connector_shapes())
        load_strict(model, {**weights, **raw}, f"{name} ({self.folder})")
        model.eval()
        mx.eval([v for k, v in weights.items() if k not in blocks])
        if stream:
            fuse = (lambda w: fuse_block(w, loras, qconfig)) if loras else None
            stream_blocks(model, BlockStream(self.folder / entry["folder"], STREAMED[kind], fuse))
        return model

    def connector_shapes(self) -> dict[str, tuple[int, int]]:
        """(out, in) of the stored text connectors' Linear layers, named as LoRAs name them (headers only)."""
        if "text_projection" not in self:
            return {}
        folder = self.folder / self._entry("text_projection")["folder"]
        ours = {"video_connector.": "video_embeddings_connector.", "audio_connector.": "audio_embeddings_connector."}
        shapes, files = {}, {}
        for name, shard in read_index(folder).items():
            head = next((h for h in ours if name.startswith(h)), None)
            if head and name.endswith(".weight"):
                if shard not in files:
                    files[shard] = SafetensorsFile(folder / shard, converted=True)
                shape = files[shard].shape(name)
                if len(shape) == 2:
                    shapes[ours[head] + name[len(head): -len(".weight")]] = shape
        return shapes

    def get(self, name: str, loras: Iterable[LoRASpec] | None = None, stream: bool = False) -> nn.Module:
        """The component `name`, built once and cached (the transformer per set of LoRAs, and per `stream`)."""
        loras = [as_lora(x) for x in (self.loras if loras is None and name == "transformer" else loras or ())]
        key = (name, tuple((lr.path, lr.strength) for lr in loras)) + (("stream",) if stream else ())
        if key not in self._loaded:
            self._loaded[key] = self.load_component(name, loras, stream)
        return self._loaded[key]

    def transformer(self, loras: Iterable[LoRASpec] | None = None, stream: bool = False) -> nn.Module:
        """`stream`: low-memory mode, each block's weights read from the folder while it runs."""
        return self.get("transformer", loras, stream)

    def text_projection(self) -> nn.Module:
        return self.get("text_projection")

    def gemma(self) -> nn.Module:
        return self.get("gemma")

    def video_encoder(self) -> nn.Module:
        return self.get("video_encoder")

    def video_decoder(self) -> nn.Module:
        return self.get("video_decoder")

    def audio_encoder(self) -> nn.Module:
        return self.get("audio_encoder")

    def audio_decoder(self) -> nn.Module:
        return self.get("audio_decoder")

    def vocoder(self) -> nn.Module:
        return self.get("vocoder")

    def upsamplers(self, kind: str = "spatial_upsampler") -> list[str]:
        return [n for n, e in self.config["components"].items() if e["kind"] == kind]

    def spatial_upsampler(self, name: str | None = None) -> nn.Module:
        return self.get(name or self._only("spatial_upsampler"))

    def temporal_upsampler(self, name: str | None = None) -> nn.Module:
        return self.get(name or self._only("temporal_upsampler"))

    def _only(self, kind: str) -> str:
        names = self.upsamplers(kind)
        if len(names) != 1:
            raise CheckpointError(f"this converted model has {len(names)} {kind.replace('_', ' ')}s "
                                  f"({', '.join(names) or 'none'}); name the one you want")
        return names[0]

    def tokenizer(self, max_length: int | None = None):
        from ..text_encoder import MAX_LENGTH
        from .tokenizer import PromptTokenizer

        entry = self._entry("gemma")
        return PromptTokenizer(self.folder / entry["folder"], max_length or MAX_LENGTH,
                               gemma_config=Gemma3Config.from_dict(entry["config"]))

    def text_encoder(self, max_length: int | None = None, stream: bool = False):
        """Tokenizer + Gemma + text projection. Gemma is not cached here, so the encoder's `free_gemma` really
        frees it; the projection is built when first used, so it need not share memory with Gemma. `stream`:
        low-memory mode, Gemma's decoder layers read from the folder one at a time."""
        from ..text_encoder import MAX_LENGTH, TextEncoder

        max_length = max_length or MAX_LENGTH
        for R in self._entry("text_projection")["config"]["registers"]:
            if max_length % R:
                raise ValueError(f"max_length {max_length} must be a multiple of the connector's {R} registers "
                                 f"(the reference uses {MAX_LENGTH})")
        gemma = self.load_component("gemma", stream=stream)
        return TextEncoder(gemma, self.tokenizer(max_length), self.text_projection)

    def distilled_lora(self, strength: float | None = None) -> LoRA:
        """The distilled LoRA stored beside the base weights (the two-stage pipelines fuse it for stage 2)."""
        entry = self._entry("distilled_lora")
        folder = self.folder / entry["folder"]
        tensors = read_component(folder)
        pairs = {k[: -len(".lora_A.weight")]: (v, tensors[k[: -len("A.weight")] + "B.weight"])
                 for k, v in tensors.items() if k.endswith(".lora_A.weight")}
        metadata = {"reference_downscale_factor": str(entry["reference_downscale_factor"])} \
            if "reference_downscale_factor" in entry else {}
        return LoRA(str(folder), float(entry["strength"] if strength is None else strength), pairs, [], metadata)

    def free(self, *names: str):
        """Drop cached components (all when no name is given) and return their memory."""
        for key in list(self._loaded):
            if not names or key[0] in names:
                del self._loaded[key]
        gc.collect()
        mx.clear_cache()


def cache_root() -> Path:
    return Path(os.environ.get("LTX_MLX_CACHE") or Path.home() / ".cache" / "ltx-mlx")


def is_complete(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a finished conversion: a readable config.json and every component's index and shards."""
    try:
        bundle = LTXModelBundle(folder)
        for entry in bundle.config["components"].values():
            read_index(bundle.folder / entry["folder"])
    except (CheckpointError, KeyError, TypeError):
        return False
    return True


# The conversion cache's key: what a conversion read, independent of where it lies. A file in the Hugging Face
# hub cache (`…/models--owner--name/snapshots/<commit>/<path>`, a link to
# `blobs/<id>`) is known by repo id + path + blob id (the LFS sha256, or the git blob id of a small file): a new
# upstream commit that leaves the file alone, or a moved HF_HOME, gives the same identity.
# Any other file is known by a content fingerprint (`fingerprint`), never by its path or mtime.

CACHE_RECORD = "cache.json"
_SNAPSHOT = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/[^/]+/(?P<path>.+)$")
_SAMPLES, _BLOCK, _WHOLE = 64, 4096, 16 << 20
# The files of a Gemma folder that a conversion reads (a README or .gitattributes change is no new model).
_FOLDER_FILES = re.compile(r"(config\.json|.*\.safetensors|model\.safetensors\.index\.json|tokenizer.*|"
                           r"special_tokens_map\.json|added_tokens\.json|preprocessor_config\.json|"
                           r"processor_config\.json|chat_template\.json(?:l)?|chat_template\.jinja|"
                           r"generation_config\.json)$")


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 over the size, the safetensors header (names, dtypes, shapes, offsets, metadata) — or the whole file
    when it is under 16 MiB — and 64 blocks of 4 KiB spread evenly over the file (≈ 256 KiB read).

    It detects: any change of size, header, config or metadata, and any change inside a sampled block (a retrained
    or fine-tuned checkpoint differs in every block). It does NOT detect an edit of a few tensor bytes between the
    sampled blocks with the size and header unchanged."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        if size <= _WHOLE:
            h.update(f.read())
            return h.hexdigest()
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        h.update(head + f.read(min(n, 100_000_000)))
        for i in range(_SAMPLES):
            f.seek(i * (size - _BLOCK) // (_SAMPLES - 1))
            h.update(f.read(_BLOCK))
    return h.hexdigest()


def file_identity(path: str | os.PathLike) -> list:
    """["hub", repo id, path in repo, blob id] for a hub-cache file, else ["local", fingerprint]."""
    p = Path(path)
    m = _SNAPSHOT.search(p.as_posix())
    if m and p.is_symlink():
        return ["hub", f"{m['owner']}/{m['name']}", m["path"], os.path.basename(os.readlink(p))]
    return ["local", fingerprint(p)]


def identity(path: str | os.PathLike) -> list:
    """The identity of a file, or of a folder's convertible files (by name relative to the folder)."""
    p = Path(path)
    if not p.is_dir():
        return file_identity(p)
    files = sorted(f for f in p.rglob("*") if f.is_file() and _FOLDER_FILES.match(f.name)
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    return [[f.relative_to(p).as_posix(), file_identity(f)] for f in files]


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def _source(folder: Path) -> str | None:
    """What a finished cache entry was converted from (its cache.json), None for an unfinished leftover."""
    try:
        record = json.loads((folder / CACHE_RECORD).read_text())
        return ", ".join(f"{name} {json.dumps(key)}" for name, key in record["inputs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_cache(root: str | os.PathLike) -> list[tuple[str, int, str | None]]:
    """(name, bytes, converted from — None for a leftover of a killed run) of every entry of the conversion cache."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [(p.name, _size(p), _source(p)) for p in sorted(root.iterdir()) if p.is_dir()]


def clear_cache(root: str | os.PathLike) -> list[tuple[str, int, str | None]]:
    """Remove every entry of the conversion cache; returns what was removed."""
    removed = list_cache(root)
    for name, _, _ in removed:
        shutil.rmtree(Path(root) / name)
    return removed


def cached_conversion(checkpoint: str, gemma_root: str | None = None, spatial_upsamplers=(), temporal_upsamplers=(),
                      options: ConvertOptions | None = None) -> Path:
    """The cache folder of an official checkpoint's conversion, converting it the first time.

    Without `gemma_root` only an existing conversion is taken: a new one would lack the text encoder, and is
    refused before anything is converted."""
    opts = options or ConvertOptions()
    folder = cache_folder(checkpoint, gemma_root, spatial_upsamplers, temporal_upsamplers, opts)
    if is_complete(folder):
        return folder
    if gemma_root is None:
        raise CheckpointError(f"{checkpoint} is an official checkpoint, and converting it needs the Gemma-3 text "
                              "encoder: pass gemma_root (generate.py: --gemma-root) with the folder or hub id "
                              "google/gemma-3-12b-it-qat-q4_0-unquantized, or pass a folder converted by convert.py")
    opts.force = True  # whatever lies there is an unfinished or damaged conversion, never a finished one
    convert(checkpoint, str(folder), gemma_root, tuple(spatial_upsamplers), tuple(temporal_upsamplers), opts)
    inputs = [p for p in (checkpoint, gemma_root, *spatial_upsamplers, *temporal_upsamplers) if p]
    (folder / CACHE_RECORD).write_text(json.dumps({"inputs": [[Path(p).name, identity(p)] for p in inputs]}))
    return folder


def cache_folder(checkpoint: str, gemma_root: str | None, spatial_upsamplers, temporal_upsamplers,
                 opts: ConvertOptions) -> Path:
    """Where the cache keeps the conversion of these inputs with these options: keyed by what the inputs hold
    (hub files by repo, path and blob id; other files by a content fingerprint, see `identity`), not by path."""
    inputs = [checkpoint, gemma_root, *spatial_upsamplers, *temporal_upsamplers, *(p for p, _ in opts.loras),
              *([opts.distilled_lora[0]] if opts.distilled_lora else [])]
    settings = {"inputs": [identity(p) if p else None for p in inputs], "dtype": opts.dtype,
                "lora_strengths": [s for _, s in opts.loras], "distilled": opts.distilled_lora,
                "quantize": {k: [v.bits, v.group_size, v.mode, v.high_bits, v.edge_blocks]
                             for k, v in sorted(opts.quantize.items())},
                **({"kind": opts.checkpoint_kind} if opts.checkpoint_kind else {})}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]  # key format 2
    return cache_root() / f"{Path(checkpoint).stem}-{opts.dtype}-{digest}"


def load(path_or_repo: str | os.PathLike, loras: Iterable[LoRASpec] = (), *, gemma_root: str | None = None,
         spatial_upsamplers: Iterable[str] = (), temporal_upsamplers: Iterable[str] = (), dtype: str | None = None,
         quantize: int | dict[str, QuantizationPlan] | None = None, progress: bool = True) -> LTXModelBundle:
    """Open an LTX-2 / LTX-2.3 model for MLX.

    `path_or_repo`: a converted folder, a Hugging Face repo id of one (`owner/name`), or an official
    single-file checkpoint (local, or `owner/name/file.safetensors`) — converted once into
    `~/.cache/ltx-mlx` (or `$LTX_MLX_CACHE`) with `gemma_root`, upsamplers, `dtype` (default bfloat16) and
    `quantize` (bits for the transformer and Gemma, or plans from `convert.quantization_plans`); these conversion
    options are refused with a folder that is already converted.
    `loras` are fused into the transformer in memory whenever it is loaded.
    """
    path = resolve_path(os.fspath(path_or_repo))
    if os.path.isdir(path):
        check_no_conversion_options(path, gemma_root=gemma_root, spatial_upsamplers=spatial_upsamplers,
                                    temporal_upsamplers=temporal_upsamplers, dtype=dtype, quantize=quantize)
        return LTXModelBundle(path, loras)
    if not path.endswith(".safetensors"):
        raise CheckpointError(f"{path} is neither a converted ltx-mlx folder nor an official .safetensors checkpoint")
    plans = quantization_plans(quantize) if isinstance(quantize, int) else dict(quantize or {})
    opts = ConvertOptions(dtype=dtype or "bfloat16", quantize=plans, progress=progress)
    spatial = [resolve_path(p) for p in spatial_upsamplers]
    temporal = [resolve_path(p) for p in temporal_upsamplers]
    folder = cached_conversion(path, resolve_path(gemma_root) if gemma_root else None, spatial, temporal, opts)
    return LTXModelBundle(folder, loras)


def check_no_conversion_options(folder, **options):
    """Conversion options given with an already converted folder would be ignored: an error that names them."""
    flags = {"gemma_root": "--gemma-root", "spatial_upsamplers": "--spatial-upsampler-path",
             "temporal_upsamplers": "--temporal-upsampler-path", "dtype": "--dtype", "quantize": "-q/--quantize",
             "distilled_lora": "--distilled-lora"}
    given = [f"{flags[k]} ({k})" for k, v in options.items() if v not in (None, (), [], {}, "")]
    if given:
        raise ValueError(f"{', '.join(given)} only apply when converting an official checkpoint, and {folder} is "
                         "already converted; drop them, or pass the official .safetensors file to convert it with them")
