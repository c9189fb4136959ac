"""The load path users run, for tests: an official-format file → `ltx_mlx.convert.convert` → `ltx_mlx.load` →
one component. Parity tests load every model this way, so they prove the path that generation uses."""

import json
from pathlib import Path

import ltx_mlx
from ltx_mlx.convert import ConvertOptions, convert

_converted: dict[tuple, Path] = {}


def _stamp(path) -> tuple:
    path = Path(path).resolve()
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return str(path), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())


def convert_official(checkpoint=None, *, gemma=None, upsampler=None, dtype: str = "float32", quantize=None,
                     loras=(), components=None, out=None) -> Path:
    """Convert once per (inputs, options); the folder lies beside the first input unless `out` is given."""
    key = tuple(_stamp(p) if p else None for p in (checkpoint, gemma, upsampler)) + (
        dtype, repr(quantize), repr(list(loras)), components)
    if out is None and key in _converted and _converted[key].is_dir():
        return _converted[key]
    first = Path(next(p for p in (checkpoint, gemma, upsampler) if p))
    folder = Path(out) if out else first.parent / f"{first.stem}.{dtype}.{len(_converted)}.mlx"
    spatial, temporal = (), ()
    if upsampler is not None:
        from ltx_mlx.weights.checkpoint import SafetensorsFile

        temporal_only = not SafetensorsFile(upsampler).config().get("spatial_upsample", True)
        spatial, temporal = ((), (str(upsampler),)) if temporal_only else ((str(upsampler),), ())
    options = ConvertOptions(dtype=dtype, quantize=dict(quantize or {}), loras=list(loras), force=True,
                             progress=False, components=components)
    convert(str(checkpoint) if checkpoint else None, str(folder), str(gemma) if gemma else None, spatial, temporal,
            options)
    _converted[key] = folder
    return folder


def load_official(checkpoint, kind: str, dtype: str = "float32", **kwargs):
    """One component of an official checkpoint (`kind`: transformer, text_projection, video_encoder, …),
    converted on its own."""
    folder = convert_official(checkpoint, dtype=dtype, components=(kind,), **kwargs)
    return ltx_mlx.load(folder).load_component(kind)


def load_gemma(folder, dtype: str = "float32", **kwargs):
    """Gemma-3 from a Hugging Face folder, converted on its own."""
    return ltx_mlx.load(convert_official(gemma=folder, dtype=dtype, **kwargs)).load_component("gemma")


def load_upsampler(path, dtype: str = "float32"):
    """A latent upsampler from its own official file."""
    folder = convert_official(upsampler=path, dtype=dtype)
    (name,) = json.loads((folder / "config.json").read_text())["components"]
    return ltx_mlx.load(folder).load_component(name)
