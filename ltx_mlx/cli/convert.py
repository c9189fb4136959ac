"""`convert.py` / `ltx-mlx-convert`: official LTX-2 / LTX-2.3 files → an MLX model folder.

    python convert.py --checkpoint-path ltx-2.3-22b-dev.safetensors --gemma-root gemma-3-12b \\
        --spatial-upsampler-path ltx-2.3-spatial-upscaler-x2-1.0.safetensors \\
        --distilled-lora ltx-2.3-22b-distilled-lora-384.safetensors 0.8 --mlx-path ltx-2.3-mlx -q
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .args import PathAndStrength
from ..weights.convert import DTYPES, QUANTIZABLE, ConvertOptions, convert, quantization_plans
from ..weights.quantize import MODES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert.py", description="Convert official LTX-2 / LTX-2.3 files into an MLX "
                                "model folder. Every input may also be a Hugging Face repo id (owner/name/file).")
    p.add_argument("--checkpoint-path", help="official single-file checkpoint (.safetensors); may be left out to "
                   "convert only the other inputs (e.g. a Gemma folder or an upsampler)")
    p.add_argument("--gemma-root", help="Gemma-3 folder (google/gemma-3-12b-it-qat-q4_0-unquantized)")
    p.add_argument("--spatial-upsampler-path", action="append", default=[], help="spatial latent upsampler (repeatable)")
    p.add_argument("--temporal-upsampler-path", action="append", default=[], help="temporal latent upsampler")
    p.add_argument("--distilled-lora", nargs="+", action=PathAndStrength, metavar=("PATH", "STRENGTH"),
                   help="distilled LoRA, stored as its own component for the two-stage pipelines (strength 1.0)")
    p.add_argument("--lora", nargs="+", action=PathAndStrength, default=[], metavar=("PATH", "STRENGTH"),
                   help="LoRA fused into the transformer's weights now (repeatable)")
    p.add_argument("--checkpoint-kind", choices=("distilled", "dev"),
                   help="whether the checkpoint is distilled or dev, recorded in the folder for generate.py "
                        "(default: from the official file name, ltx-2.3-22b-distilled… / …-dev…)")
    p.add_argument("--mlx-path", default="mlx_model", help="output folder (default: mlx_model)")
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="weights dtype (default: bfloat16)")
    p.add_argument("-q", "--quantize", action="store_true", help="quantize the transformer blocks and Gemma's layers")
    p.add_argument("--q-bits", type=int, choices=(4, 8), default=4,
                   help="bits per weight (default: 4; mxfp8 needs 8, mxfp4 and nvfp4 need 4)")
    p.add_argument("--q-group-size", type=int, choices=(16, 32, 64, 128), default=64,
                   help="weights per scale (default: 64; mxfp4 and mxfp8 need 32, nvfp4 needs 16)")
    p.add_argument("--q-mode", choices=MODES, default="affine",
                   help="quantization mode (default: affine, a scale and offset per group; mxfp4, mxfp8 and nvfp4 "
                        "store floats with shared scales)")
    p.add_argument("--quantize-components", nargs="+", choices=QUANTIZABLE, default=list(QUANTIZABLE),
                   help="which components -q quantizes (default: transformer gemma)")
    p.add_argument("--transformer-q-bits", type=int, choices=(4, 8), help="bits for the transformer (default: --q-bits)")
    p.add_argument("--gemma-q-bits", type=int, choices=(4, 8), help="bits for Gemma (default: --q-bits)")
    p.add_argument("--q-high-bits", type=int, choices=(4, 8),
                   help="mixed precision: bits for the first/last --q-edge-blocks blocks (affine; the float "
                        "modes have fixed bits)")
    p.add_argument("--q-edge-blocks", type=int, default=2,
                   help="mixed precision: how many first and last blocks get --q-high-bits (default: 2)")
    p.add_argument("--force", action="store_true", help="replace an existing --mlx-path")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    plans = {}
    if args.quantize:
        plans = quantization_plans(args.q_bits, args.q_group_size, args.q_mode, args.quantize_components,
                                   args.q_high_bits, args.q_edge_blocks,
                                   {"transformer": args.transformer_q_bits or args.q_bits,
                                    "gemma": args.gemma_q_bits or args.q_bits})
    elif args.q_high_bits or args.transformer_q_bits or args.gemma_q_bits:
        raise ValueError("--q-high-bits / --transformer-q-bits / --gemma-q-bits need -q/--quantize")
    return ConvertOptions(dtype=args.dtype, quantize=plans, loras=list(args.lora), distilled_lora=args.distilled_lora,
                          force=args.force, progress=not args.quiet, checkpoint_kind=args.checkpoint_kind)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
        out = convert(args.checkpoint_path, args.mlx_path, args.gemma_root, tuple(args.spatial_upsampler_path),
                      tuple(args.temporal_upsampler_path), options)
    except KeyboardInterrupt:
        print("convert.py: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # CheckpointError and FileExistsError included
        message = " ".join(str(e).split())
        print(f"convert.py: error: {message}", file=sys.stderr)
        return 1
    print(summary(out))
    return 0


def summary(folder) -> str:
    """One line per component: its size on disk and how it is quantized."""
    config = json.loads((Path(folder) / "config.json").read_text())
    lines = [f"converted LTX {config['model_version'] or '(no model_version)'} to {folder} ({config['dtype']}):"]
    for name in config["components"]:
        size = sum(f.stat().st_size for f in (Path(folder) / name).glob("*.safetensors"))
        q = config["quantization"].get(name)
        how = f", {q['bits']}-bit {q['mode']} (group {q['group_size']})" if q else ""
        high = [v["bits"] for v in (q or {}).values() if isinstance(v, dict)]
        if high:
            how += f", {max(high)}-bit in {len(high)} edge-block layers"
        lines.append(f"  {name:<24} {size / 1e9:8.3f} GB{how}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
