"""Official LTX-2 / LTX-2.3 files → a self-contained MLX model folder, one tensor at a time.

Inputs: the single-file checkpoint (dev or distilled, bf16 or fp8), the Gemma-3 folder, optional latent
upsamplers, an optional distilled LoRA (kept as its own component, for the pipelines to fuse per stage)
and optional user LoRAs (fused into the transformer here). Every component is first checked against the
model its config builds (shapes only, nothing read), then streamed: read, cast, fuse, sanitize, quantize,
write a shard. Peak memory is about one shard, never the checkpoint.

Output (`config.json` + one subfolder per component, see `model_folder`):
    config.json   format "mlx", model_version, the official config sections, dtype, per-component
                  quantization (with per-layer overrides), upsamplers, LoRAs
    transformer/ text_projection/ video_encoder/ video_decoder/ audio_encoder/ audio_decoder/ vocoder/
    gemma/        weights + Gemma's config.json + tokenizer files
    spatial_upsampler_x2/ … temporal_upsampler_x2/ distilled_lora/
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from tqdm import tqdm

from .. import __version__
from .checkpoint import CheckpointError, SafetensorsFile, checkpoint_kind, load_strict, official_tensor, read_gemma_config, weight_files
from .components import CHECKPOINT_KINDS, KINDS, QUANTIZABLE, Kind, build, upsampler_config, upsampler_name
from .lora import LoRA, check_loras, fuse_loras, read_lora
from .folder import MAX_SHARD_BYTES, atomic_output_dir, ensure_free_space, resolve_path, write_component

from ..models import text_projection
from ..models.text_projection import feature_extractor_version
from ..models.transformer import PREFIX as TRANSFORMER_PREFIX
from .quantize import QuantizationPlan, quantize_model
from .tokenizer import PromptTokenizer

FORMAT = "mlx"
CONFIG_NAME = "config.json"
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
FORMAT_VERSION = 2  # bumped whenever a converted folder from an older version can no longer be loaded
# Gemma folder files that the tokenizer (and later tools) need, copied as they are.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "preprocessor_config.json", "processor_config.json", "chat_template.json",
                   "chat_template.jinja", "generation_config.json")
_SCALES = (".weight_scale", ".input_scale")

class StreamingFile(SafetensorsFile):
    """A `SafetensorsFile` that reads each tensor with a plain file read instead of a memory map,
    so converting a file larger than memory never keeps its pages resident."""

    def _raw(self, key: str) -> np.ndarray:
        _, _, begin, end = self._entries[key]
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            data = f.read(end - begin)
        if len(data) != end - begin:
            raise CheckpointError(f"{self.path} is truncated: tensor {key!r} ends past the end of the file")
        return np.frombuffer(data, dtype=np.uint8)

@dataclass
class Source:
    """One component's tensors in one file: (file key, reference-named key) pairs."""

    sf: SafetensorsFile
    keys: list[tuple[str, str]]

@dataclass
class Job:
    """One component to write: where its tensors come from, the model they must fill, how to quantize."""

    kind: Kind
    entry: dict  # its config.json entry (kind, folder, the config its model is built from, quantization, …)
    sources: list[Source]
    model: nn.Module
    quantized: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # layer path -> (group, bits, mode)
    loras: list[LoRA] = field(default_factory=list)
    out_bytes: int = 0

@dataclass
class ConvertOptions:
    dtype: str = "bfloat16"
    quantize: dict[str, QuantizationPlan] = field(default_factory=dict)  # component -> plan
    loras: list[tuple[str, float]] = field(default_factory=list)  # fused into the transformer
    distilled_lora: tuple[str, float] | None = None
    force: bool = False
    progress: bool = True
    max_shard_bytes: int = MAX_SHARD_BYTES
    components: tuple[str, ...] | None = None  # convert only these of the checkpoint's components (None: all)
    checkpoint_kind: str | None = None  # "distilled" / "dev"; None: from the file name (see `checkpoint_kind`)

def quantization_plans(bits: int = 4, group_size: int = 64, mode: str = "affine", components=QUANTIZABLE,
                       high_bits: int | None = None, edge_blocks: int = 0,
                       bits_per_component: dict[str, int] | None = None) -> dict[str, QuantizationPlan]:
    """One plan per quantized component (`-q` quantizes the DiT and Gemma; VAEs, vocoders, norms, AdaLN and
    embeddings are never quantized). Mixed precision: `high_bits` for the first/last `edge_blocks` blocks."""
    unknown = set(components) - set(QUANTIZABLE)
    if unknown:
        raise ValueError(f"cannot quantize {sorted(unknown)}: only {', '.join(QUANTIZABLE)} are quantizable")
    if high_bits is not None and edge_blocks <= 0:
        raise ValueError("mixed precision needs the number of edge blocks (--q-edge-blocks N, N ≥ 1)")
    plans = {}
    for name in components:
        b = (bits_per_component or {}).get(name, bits)
        plans[name] = QuantizationPlan(bits=b, group_size=group_size, mode=mode, high_bits=high_bits,
                                       edge_blocks=edge_blocks if high_bits else 0)
        plans[name].validate()
    return plans

# ---------------------------------------------------------------------------------------------- reading

def _routed(sf: SafetensorsFile, kind: Kind) -> Source:
    keys = [(k, r) for k in sf.keys() if not k.endswith(_SCALES) and (r := kind.route(k)) is not None]
    return Source(sf, keys)

def _placeholder(sf: SafetensorsFile, key: str, dtype: mx.Dtype) -> mx.array:
    """A never-evaluated stand-in with the tensor's shape and converted dtype (for shape checks)."""
    st = sf.dtype(key)
    floating = st.startswith(("F", "BF"))
    return mx.zeros(sf.shape(key), dtype=dtype if floating else mx.int32)

def _quantize_tensor(key: str, value: mx.array, quantized: dict) -> list[tuple[str, mx.array]]:
    """A Linear weight as `nn.quantize` leaves it (weight, scales[, biases]); anything else unchanged."""
    path = key[: -len(".weight")] if key.endswith(".weight") else None
    if path not in quantized:
        return [(key, value)]
    group_size, bits, mode = quantized[path]
    packed = mx.quantize(value, group_size, bits, mode=mode)
    out = [(path + ".weight", packed[0]), (path + ".scales", packed[1])]
    if len(packed) > 2:
        out.append((path + ".biases", packed[2]))
    return out

def _lora_subset(loras: list[LoRA], module: str) -> list[LoRA]:
    return [LoRA(lr.path, lr.strength, {module: lr.pairs[module]}) for lr in loras if module in lr.pairs]

def _fused(job: Job, ref_key: str, value: mx.array) -> mx.array:
    hits = _lora_subset(job.loras, ref_key[: -len(".weight")]) if ref_key.endswith(".weight") else []
    if not hits:
        return value
    one = {ref_key: value}
    fuse_loras(one, hits)
    return one[ref_key]

def converted_tensors(job: Job, dtype: mx.Dtype, placeholders: bool = False) -> Iterator[tuple[str, mx.array]]:
    """The component's tensors in our layout, one source tensor at a time: read (or a shape-only placeholder),
    fuse LoRAs, sanitize, quantize. Source keys are reference names, so LoRAs fuse before any renaming."""
    if job.kind.name == "gemma" and dtype == mx.float16:
        dtype = mx.bfloat16  # Gemma-3's activations overflow float16 (inf/NaN prompts): it stays bfloat16
    for source in job.sources:
        for key, ref_key in source.keys:
            if placeholders:
                value = _placeholder(source.sf, key, dtype)
            else:
                value = _fused(job, ref_key, official_tensor(source.sf, key, dtype))
            for name, v in job.kind.convert({ref_key: value}).items():
                yield from _quantize_tensor(name, v, job.quantized)

def _stream(job: Job, dtype: mx.Dtype, bar: tqdm, shard_bytes: int) -> Iterator[tuple[str, mx.array]]:
    """Evaluated tensors for `write_component`; the freed buffers of each written shard go back to the system."""
    pending = 0
    for name, value in converted_tensors(job, dtype):
        mx.eval(value)
        yield name, value
        bar.update(value.nbytes)
        pending += value.nbytes
        if pending > shard_bytes:  # write_component has just flushed a shard
            mx.clear_cache()
            pending = 0

# ---------------------------------------------------------------------------------------------- planning

def _quantize_job(job: Job, plan: QuantizationPlan | None):
    """Choose the quantized layers exactly as `quantize_model` does, on the (lazy) model itself."""
    if plan is None:
        return
    plan = quantize_model(job.model, plan, job.kind.quantizable)
    job.quantized = {p: (m.group_size, m.bits, m.mode) for p, m in job.model.named_modules()
                     if isinstance(m, nn.QuantizedLinear)}
    job.entry["quantization"] = plan.as_config()

def _check_job(job: Job, dtype: mx.Dtype) -> dict[str, tuple]:
    """Strict key/shape check of the whole component against its model, before anything is read or written."""
    weights = dict(converted_tensors(job, dtype, placeholders=True))
    load_strict(job.model, weights, job.entry["folder"].replace("_", " "))
    job.out_bytes = sum(v.nbytes for v in weights.values())
    return {k: tuple(v.shape) for k, v in weights.items()}

def _text_dims(sf: SafetensorsFile, config: dict, gemma_cfg) -> dict:
    """Gemma's hidden size and number of hidden states, which fix the text projection's input width."""
    version = feature_extractor_version(config["transformer"])
    key = "text_embedding_projection." + ("aggregate_embed.weight" if version == 1 else "video_aggregate_embed.weight")
    if key not in sf:
        raise CheckpointError(f"{sf.path} has no {key}: the text projection is missing from this checkpoint")
    width = sf.shape(key)[1]
    if gemma_cfg is not None:
        D, L = gemma_cfg.hidden_size, gemma_cfg.num_hidden_layers + 1
        if D * L != width:
            raise CheckpointError(f"the Gemma folder does not match this checkpoint: its text projection takes {width} "
                                  f"features but this Gemma gives {D} x {L} = {D * L}; use the Gemma-3 model the "
                                  "LTX checkpoint was trained with (google/gemma-3-12b-it-qat-q4_0-unquantized)")
    else:
        D = int(config["transformer"].get("caption_channels") or 0)
        if D <= 0 or width % D:
            raise CheckpointError(f"{sf.path}: cannot infer the Gemma hidden size (caption_channels={D}, text "
                                  f"projection width {width}); pass --gemma-root")
        L = width // D
    return {"embedding_dim": D, "num_states": L}

def resolve_file(path: str, what: str) -> str:
    """A local file, or `owner/name/file` from the hub; a bare repo id would download a whole repository."""
    if not os.path.exists(path) and len(path.strip("/").split("/")) == 2 and not path.startswith((".", "/", "~")):
        raise ValueError(f"{what} {path!r} looks like a Hugging Face repo id: name the file inside it, "
                         f"e.g. {path}/<file>.safetensors")
    resolved = resolve_path(path)
    if os.path.isdir(resolved):
        raise ValueError(f"{what} {path!r} is a folder; pass the .safetensors file")
    return resolved

def read_checkpoint(path: str) -> tuple[SafetensorsFile, dict, str | None]:
    """The official file, its metadata config and model_version, with clear errors for anything else."""
    sf = StreamingFile(path)
    config = sf.config()
    if not config:
        raise CheckpointError(f"{sf.path} has no metadata 'config': it is not an official LTX-2/LTX-2.3 single-file "
                              "checkpoint (or it was re-saved without its metadata); use the original file")
    if not set(config) & set(CHECKPOINT_KINDS.values()):
        raise CheckpointError(f"{sf.path}: the metadata config has none of the sections transformer, vae, audio_vae, "
                              f"vocoder (it has: {sorted(config)}); it is not an LTX-2/LTX-2.3 checkpoint")
    version = sf.metadata.get("model_version")
    if version is not None and not str(version).startswith("2."):
        raise CheckpointError(f"{sf.path}: model_version {version!r} is not LTX-2 (2.x) or LTX-2.3 (2.3.x); "
                              "this converter only handles LTX-2 family checkpoints")
    return sf, config, version

def connector_shapes(sf: SafetensorsFile) -> dict[str, tuple[int, int]]:
    """(out, in) of the text connectors' Linear layers, named as a LoRA names them (`video_embeddings_connector.…`)."""
    prefixes = (text_projection.VIDEO_CONNECTOR_PREFIX, text_projection.AUDIO_CONNECTOR_PREFIX)
    return {k[len(TRANSFORMER_PREFIX): -len(".weight")]: sf.shape(k) for k in sf.keys()
            if k.startswith(prefixes) and k.endswith(".weight") and len(sf.shape(k)) == 2}

def _registers(sf: SafetensorsFile, config: dict) -> list[int]:
    """Learnable registers per connector: the reference builds 128 whatever the config says; a stored tensor
    fixes the number (and a file without one fails the strict check against 128)."""
    counts = []
    for prefix in (text_projection.VIDEO_CONNECTOR_PREFIX, text_projection.AUDIO_CONNECTOR_PREFIX):
        key = prefix + "learnable_registers"
        counts.append(sf.shape(key)[0] if key in sf else 128)
    return counts

def component_config(kind: str, sf: SafetensorsFile, config: dict, gemma_cfg) -> dict:
    """The config a checkpoint component's model is built from (stored with it in the converted folder)."""
    section = CHECKPOINT_KINDS[kind]
    if section not in config:
        raise CheckpointError(f"{sf.path}: the metadata config has no {section!r} section, which the "
                              f"{kind.replace('_', ' ')} needs; this is not a complete LTX-2/LTX-2.3 checkpoint")
    if kind == "text_projection":
        return {"transformer": config["transformer"], **_text_dims(sf, config, gemma_cfg),
                "registers": _registers(sf, config)}
    return config[section]

def _checkpoint_jobs(sf: SafetensorsFile, config: dict, gemma_cfg, only: tuple[str, ...] | None) -> list[Job]:
    unknown = set(only or ()) - set(CHECKPOINT_KINDS)
    if unknown:
        raise ValueError(f"unknown checkpoint components {sorted(unknown)}; choose from {', '.join(CHECKPOINT_KINDS)}")
    jobs = []
    for name in CHECKPOINT_KINDS:
        if only is not None and name not in only:
            continue
        kind = KINDS[name]
        source = _routed(sf, kind)
        if not source.keys:
            if only is not None:
                raise CheckpointError(f"{sf.path} holds no {name.replace('_', ' ')} weights")
            continue
        cfg = component_config(name, sf, config, gemma_cfg)
        jobs.append(Job(kind, {"kind": name, "folder": name, "config": cfg}, [source], build(name, cfg)))
    if not jobs:
        raise CheckpointError(f"{sf.path} holds no LTX model weights (model.diffusion_model.*, vae.*, audio_vae.*, "
                              "vocoder.*): not an LTX-2/LTX-2.3 checkpoint")
    return jobs

def _gemma_job(gemma_root: str) -> Job:
    folder = Path(gemma_root)
    cfg = read_gemma_config(folder)
    sources = [_routed(StreamingFile(p), KINDS["gemma"]) for p in weight_files(folder)]
    if not any(s.keys for s in sources):
        raise CheckpointError(f"{folder} holds no Gemma language-model weights")
    if any(k.endswith(".scales") for s in sources for k, _ in s.keys):
        raise CheckpointError(f"{folder} holds already-quantized (MLX) Gemma weights: pass the original Gemma-3 "
                              "folder (google/gemma-3-12b-it-qat-q4_0-unquantized) and quantize with -q")
    PromptTokenizer(folder, gemma_config=cfg)  # an unreadable or mismatched tokenizer fails now, not at generation
    stored = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "quantization"}
    entry = {"kind": "gemma", "folder": "gemma", "config": stored}
    return Job(KINDS["gemma"], entry, sources, build("gemma", stored))

def _upsampler_job(path: str, kind: str) -> Job:
    sf = StreamingFile(path)
    config = sf.config()
    name = upsampler_name(kind, upsampler_config(config, kind, sf.path))
    entry = {"kind": kind, "folder": name, "config": config, "source": os.path.basename(sf.path)}
    return Job(KINDS[kind], entry, [_routed(sf, KINDS[kind])], build(kind, config))

# ---------------------------------------------------------------------------------------------- writing

def _write_lora(folder: Path, lora: LoRA):
    tensors = []
    for module, (a, b) in sorted(lora.pairs.items()):
        tensors += [(module + ".lora_A.weight", a), (module + ".lora_B.weight", b)]
    write_component(folder, tensors)

def _copy_gemma_files(src: Path, dst: Path, plan_config: dict | None):
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    if plan_config:
        config["quantization"] = plan_config
    (dst / "config.json").write_text(json.dumps(config, indent=1))

@dataclass
class Conversion:
    """Everything a conversion will write, checked and sized, before anything is written."""

    config: dict
    model_version: str | None
    source: str | None  # the official checkpoint, when one was given
    checkpoint_kind: str | None  # "distilled" / "dev", None when neither the options nor the file name tell
    jobs: list[Job]
    loras: list[LoRA]
    distilled: LoRA | None
    unfused_lora_modules: list[str]  # LoRA modules of the text connectors: accepted, not fused (see check_loras)
    gemma_folder: Path | None

    @property
    def output_bytes(self) -> int:
        lora = sum(a.nbytes + b.nbytes for a, b in self.distilled.pairs.values()) if self.distilled else 0
        return sum(j.out_bytes for j in self.jobs) + lora

def plan_conversion(checkpoint_path: str | None = None, gemma_root: str | None = None,
                    spatial_upsampler_paths: tuple[str, ...] = (), temporal_upsampler_paths: tuple[str, ...] = (),
                    options: ConvertOptions | None = None) -> Conversion:
    """Open every input, build each component's model lazily, choose the quantized layers and check every
    tensor's converted name and shape against the model — reading headers only, no weights.

    Any subset of the inputs may be given (e.g. only a Gemma folder, or a checkpoint that holds only the VAE);
    the folder then holds just those components."""
    opts = options or ConvertOptions()
    if opts.dtype not in DTYPES:
        raise ValueError(f"dtype {opts.dtype!r} is not one of {', '.join(DTYPES)}")
    unknown = set(opts.quantize) - set(QUANTIZABLE)
    if unknown:
        raise ValueError(f"cannot quantize {sorted(unknown)}: only {', '.join(QUANTIZABLE)} are quantizable")
    if not (checkpoint_path or gemma_root or spatial_upsampler_paths or temporal_upsampler_paths):
        raise ValueError("nothing to convert: give the official checkpoint (--checkpoint-path), the Gemma folder "
                         "(--gemma-root) or an upsampler file")
    dtype = DTYPES[opts.dtype]
    sf = config = version = None
    if checkpoint_path:
        sf, config, version = read_checkpoint(resolve_file(checkpoint_path, "the checkpoint"))
    gemma_folder = Path(resolve_path(gemma_root)) if gemma_root else None
    gemma_job = _gemma_job(str(gemma_folder)) if gemma_folder else None
    jobs = (_checkpoint_jobs(sf, config, gemma_job.model.config if gemma_job else None, opts.components)
            if sf is not None else [])
    jobs += [gemma_job] if gemma_job else []
    for kind, paths in (("spatial_upsampler", spatial_upsampler_paths), ("temporal_upsampler", temporal_upsampler_paths)):
        jobs += [_upsampler_job(resolve_file(p, f"the {kind.replace('_', ' ')}"), kind) for p in paths]
    names = [j.entry["folder"] for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"two inputs convert to the same component folder ({names}); pass each upsampler once")
    has_transformer = any(j.kind.name == "transformer" for j in jobs)
    if (opts.loras or opts.distilled_lora) and not has_transformer:
        raise ValueError("LoRAs apply to the transformer, and these inputs hold none: pass the official checkpoint")

    loras = [read_lora(resolve_file(p, "the LoRA"), s) for p, s in opts.loras]
    distilled = (read_lora(resolve_file(opts.distilled_lora[0], "the distilled LoRA"), opts.distilled_lora[1])
                 if opts.distilled_lora else None)
    unfused = []
    for job in jobs:
        if job.kind.name == "transformer":
            job.loras = loras
            dense = _check_job(job, dtype)
            unfused = check_loras(loras + ([distilled] if distilled else []),
                                  {k[: -len('.weight')]: v for k, v in dense.items() if k.endswith('.weight')},
                                  connector_shapes(sf))
        plan = opts.quantize.get(job.kind.name)
        if plan is not None or job.kind.name != "transformer":
            _quantize_job(job, plan)
            _check_job(job, dtype)
    kind = checkpoint_kind(sf.path, opts.checkpoint_kind) if sf is not None else opts.checkpoint_kind
    return Conversion(config or {}, version, sf.path if sf is not None else None, kind, jobs, loras, distilled,
                      unfused, gemma_folder)

def write_conversion(conv: Conversion, mlx_path: str, options: ConvertOptions | None = None) -> Path:
    """Stream a planned conversion into `mlx_path` (a temporary folder renamed at the end)."""
    opts = options or ConvertOptions()
    dtype, out = DTYPES[opts.dtype], Path(mlx_path)
    ensure_free_space(out, int(conv.output_bytes * 1.02) + (64 << 20))
    try:
        _write_into(conv, out, dtype, opts)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise OSError(f"the disk filled up while writing {out} (about {conv.output_bytes / 1e9:.1f} GB needed); "
                      "nothing was left there: free some space or choose another --mlx-path") from None
    return out

def _write_into(conv: Conversion, out: Path, dtype: mx.Dtype, opts: ConvertOptions):
    with atomic_output_dir(out, force=opts.force) as tmp:
        bar = tqdm(total=sum(j.out_bytes for j in conv.jobs), unit="B", unit_scale=True, disable=not opts.progress,
                   desc="converting")
        for job in conv.jobs:
            bar.set_postfix_str(job.entry["folder"])
            write_component(tmp / job.entry["folder"], _stream(job, dtype, bar, opts.max_shard_bytes),
                            opts.max_shard_bytes)
            job.model = None  # the lazy model graph is no longer needed
        bar.close()
        gemma = next((j for j in conv.jobs if j.kind.name == "gemma"), None)
        if gemma is not None:
            _copy_gemma_files(conv.gemma_folder, tmp / "gemma", gemma.entry.get("quantization"))
        if conv.distilled is not None:
            _write_lora(tmp / "distilled_lora", conv.distilled)
        (tmp / CONFIG_NAME).write_text(json.dumps(_folder_config(conv, opts), indent=1))  # last: marks it complete

def convert(checkpoint_path: str | None, mlx_path: str, gemma_root: str | None = None,
            spatial_upsampler_paths: tuple[str, ...] = (), temporal_upsampler_paths: tuple[str, ...] = (),
            options: ConvertOptions | None = None) -> Path:
    """Convert an official checkpoint (+ Gemma folder, upsamplers, LoRAs) into an MLX model folder.

    Every input may be a local path or a Hugging Face repo id (`owner/name[/file]`). Returns the folder.
    Raises CheckpointError / ValueError / FileExistsError / OSError with a message naming the fix; on any
    error (or interruption) nothing is left at `mlx_path`.
    """
    opts = options or ConvertOptions()
    if Path(mlx_path).exists() and not Path(mlx_path).is_dir():
        raise FileExistsError(f"{mlx_path} is a file, not a model folder; choose another --mlx-path "
                              "(--force replaces only a folder)")
    if Path(mlx_path).exists() and not opts.force:
        raise FileExistsError(f"{mlx_path} already exists; choose another --mlx-path or pass --force to replace it")
    conv = plan_conversion(checkpoint_path, gemma_root, spatial_upsampler_paths, temporal_upsampler_paths, opts)
    return write_conversion(conv, mlx_path, opts)

def _lora_record(lora: LoRA) -> dict:
    record = {"source": os.path.basename(lora.path), "strength": lora.strength}
    if "reference_downscale_factor" in lora.metadata:
        record["reference_downscale_factor"] = lora.reference_downscale_factor
    return record

def _folder_config(conv: Conversion, opts: ConvertOptions) -> dict:
    components = {}
    quantization = {}
    for job in conv.jobs:
        entry = dict(job.entry)
        if "quantization" in entry:
            quantization[entry["folder"]] = entry.pop("quantization")
        components[entry["folder"]] = entry
    if conv.distilled is not None:
        components["distilled_lora"] = {"kind": "lora", "folder": "distilled_lora", **_lora_record(conv.distilled)}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ltx_mlx_version": __version__,
        "model_version": conv.model_version,
        "checkpoint_kind": conv.checkpoint_kind,
        "dtype": opts.dtype,
        "config": conv.config,
        "components": components,
        "quantization": quantization,
        "fused_loras": [_lora_record(lr) for lr in conv.loras],
        "source": ({"checkpoint": os.path.basename(conv.source), "bytes": os.path.getsize(conv.source)}
                   if conv.source else None),
    }
