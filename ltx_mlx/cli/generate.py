"""`generate.py` / `ltx-mlx-generate`: text (+ images) → mp4 with audio, on MLX.

    python generate.py --prompt "a red fox trots through fresh snow at dawn" --output-path fox.mp4
    python generate.py --model ltx-2.3-dev-mlx --pipeline two-stage --prompt "..." --image first.png 0 1.0 \\
        --num-frames 121 --height 1024 --width 1536 --output-path out.mp4 --verbose
    python generate.py --model ltx-2.3-dev-mlx --pipeline a2v --audio-path song.wav --audio-start-time 12 \
        --prompt "..." --output-path clip.mp4      # a video to the song's 5 s from 12 s, the song as its sound
    python generate.py --model ltx-2.3-dev-mlx --pipeline retake --video-path clip.mp4 --start-time 1 \
        --end-time 3 --prompt "..." --output-path retake.mp4   # seconds 1 to 3 regenerated, the rest kept

The default model is the official LTX-2.3 distilled release, downloaded and converted once into the cache.
Every input is checked before any model is loaded or run; a bad one is a one-line error.
"""

from __future__ import annotations

import argparse
import sys

from ..pipelines.params import PIPELINES
from .args import PathAndStrength, finite_float

DEFAULT_MODEL = "Lightricks/LTX-2.3/ltx-2.3-22b-distilled-1.1.safetensors"
DEFAULT_GEMMA = "google/gemma-3-12b-it-qat-q4_0-unquantized"
DEFAULT_SPATIAL_UPSAMPLER = "Lightricks/LTX-2.3/ltx-2.3-spatial-upscaler-x2-1.1.safetensors"


class ImageArg(argparse.Action):
    """`PATH FRAME_IDX STRENGTH [CRF]` (as the official --image)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (3, 4):
            raise argparse.ArgumentError(self, f"takes PATH FRAME_IDX STRENGTH [CRF], got {len(values)} values")
        try:
            item = (values[0], int(values[1]), finite_float(values[2]),
                    *([int(values[3])] if len(values) == 4 else []))
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentError(self, f"FRAME_IDX and CRF must be integers and STRENGTH a finite number, "
                                         f"got {' '.join(values[1:])!r}") from None
        setattr(namespace, self.dest, (getattr(namespace, self.dest) or []) + [item])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate.py", description="Generate a video with audio from a prompt (and "
                                "images) with LTX-2 / LTX-2.3 on MLX.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="converted ltx-mlx folder, official .safetensors "
                   "checkpoint (converted once into the cache) or hub id (default: the LTX-2.3 distilled release)")
    p.add_argument("--pipeline", choices=list(PIPELINES), default="distilled",
                   help="; ".join(f"{k}: {v.description}" for k, v in PIPELINES.items()))
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None, help="guided pipelines (default: the official artefact list)")
    p.add_argument("--seed", type=int, default=None, help="default 10")
    p.add_argument("--height", type=int, default=None, help="default 1024 (two-stage), 512 (one-stage), 1088 (hq)")
    p.add_argument("--width", type=int, default=None, help="default 1536 (two-stage), 768 (one-stage), 1920 (hq)")
    p.add_argument("--num-frames", type=int, default=None, help="8k+1 frames (default 121)")
    p.add_argument("--frame-rate", type=finite_float, default=None, help="default 24")
    p.add_argument("--num-inference-steps", type=int, default=None,
                   help="guided stage-1 steps (default 30 for LTX-2.3, 40 for LTX-2, 15 for hq; distilled: fixed 8+3)")
    p.add_argument("--image", dest="images", nargs="+", action=ImageArg, default=[],
                   metavar=("PATH FRAME_IDX STRENGTH", "CRF"), help="conditioning image (repeatable)")
    a = p.add_argument_group("audio-to-video (--pipeline a2v)")
    a.add_argument("--audio-path", help="audio (or video) file whose sound the video is generated to; it is kept "
                   "as the mp4's soundtrack")
    a.add_argument("--audio-start-time", type=finite_float, default=None,
                   help="seconds into the file to start (default 0)")
    a.add_argument("--audio-max-duration", type=finite_float, default=None,
                   help="seconds of audio to use (default: the video's duration, num_frames / frame_rate)")
    r = p.add_argument_group("retake (--pipeline retake): the video's size, frames and frame rate are kept")
    r.add_argument("--video-path", help="video whose time range is regenerated (picture and sound)")
    r.add_argument("--start-time", type=finite_float, default=None, help="start of the range to regenerate, seconds")
    r.add_argument("--end-time", type=finite_float, default=None, help="end of the range to regenerate, seconds")
    p.add_argument("--lora", nargs="+", action=PathAndStrength, default=[], metavar=("PATH", "STRENGTH"),
                   help="LoRA fused into the transformer at load (repeatable)")
    g = p.add_argument_group("guidance (guided pipelines; defaults by model version)")
    for m, mod, other in (("video", "a2v", "audio"), ("audio", "v2a", "video")):
        g.add_argument(f"--{m}-cfg-guidance-scale", type=finite_float,
                       help=f"{m} CFG scale against the negative prompt")
        g.add_argument(f"--{m}-stg-guidance-scale", type=finite_float, help=f"{m} STG scale (self-attention skipped)")
        g.add_argument(f"--{m}-rescale-scale", type=finite_float,
                       help=f"{m} std rescale of the guided prediction (0: off)")
        g.add_argument(f"--{m}-stg-blocks", type=int, nargs="*", help=f"transformer blocks {m} STG perturbs")
        g.add_argument(f"--{mod}-guidance-scale", type=finite_float,
                       help=f"{m} modality scale (vs. no {other} attention)")
        g.add_argument(f"--{m}-skip-step", type=int, help=f"guide {m} every N+1 steps only (0: every step)")
    p.add_argument("--distilled-lora-strength-stage-1", type=finite_float, help="hq (default 0.25)")
    p.add_argument("--distilled-lora-strength-stage-2", type=finite_float,
                   help="two-stage/keyframes/a2v (default: the strength given at conversion), hq (default 0.5)")
    c = p.add_argument_group("converting an official checkpoint (once, into the cache)")
    c.add_argument("--gemma-root", help=f"Gemma-3 folder or hub id (default for the default model: {DEFAULT_GEMMA})")
    c.add_argument("--spatial-upsampler-path", action="append", default=[], help="spatial upsampler file")
    c.add_argument("--distilled-lora", nargs="+", action=PathAndStrength, metavar=("PATH", "STRENGTH"),
                   help="distilled LoRA stored with the conversion of a dev checkpoint: two-stage, hq, keyframes and "
                   "a2v need it for stage 2, and distilled runs a dev checkpoint with it")
    c.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                   help="weights dtype of the conversion (default: bfloat16)")
    p.add_argument("--checkpoint-kind", choices=("auto", "distilled", "dev"), default="auto",
                   help="whether the model is a distilled or dev checkpoint (auto: as recorded at conversion, else "
                   "from the official file name)")
    p.add_argument("--no-audio", action="store_true", help="skip audio decoding (video-only mp4)")
    p.add_argument("--output-path", default="output.mp4")
    p.add_argument("--low-memory", action="store_true",
                   help="read Gemma's layers and the transformer's blocks from the model folder one at a time while "
                   "they run: much less memory, the same output, slower")
    p.add_argument("--batch-guidance", action="store_true",
                   help="guided pipelines: run a step's guidance passes as one batched forward (the same result "
                   "within float32 rounding; activations times the number of passes)")
    p.add_argument("--verbose", action="store_true", help="per-stage time and peak memory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--list-cache", action="store_true", help="list the conversion cache ($LTX_MLX_CACHE, default "
                   "~/.cache/ltx-mlx) with each entry's size, and exit")
    p.add_argument("--clear-cache", action="store_true", help="remove every entry of the conversion cache, say "
                   "what was removed, and exit")
    return p


def _cache_command(argv) -> int | None:
    """--list-cache / --clear-cache, which need no prompt; None when neither is given."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not {"--list-cache", "--clear-cache"} & set(argv):
        return None
    from ..weights.load import cache_root, clear_cache, list_cache

    root = cache_root()
    entries = clear_cache(root) if "--clear-cache" in argv else list_cache(root)
    verb = "removed" if "--clear-cache" in argv else "cached"
    for name, nbytes, source in entries:
        what = f"from {source}" if source else "(unfinished leftover)"
        print(f"{verb} {root / name}  {nbytes / 1e9:.2f} GB  {what}")
    print(f"{len(entries)} entries, {sum(e[1] for e in entries) / 1e9:.2f} GB {verb} in {root}")
    return 0


def _guidance(args, m: str, mod: str) -> dict:
    return {"cfg_scale": getattr(args, f"{m}_cfg_guidance_scale"), "stg_scale": getattr(args, f"{m}_stg_guidance_scale"),
            "rescale_scale": getattr(args, f"{m}_rescale_scale"), "stg_blocks": getattr(args, f"{m}_stg_blocks"),
            "modality_scale": getattr(args, f"{mod}_guidance_scale"), "skip_step": getattr(args, f"{m}_skip_step")}


def _load(args):
    import ltx_mlx
    from ..weights.folder import resolve_path

    loras = [(resolve_path(path), strength) for path, strength in args.lora]  # a missing file fails before loading
    default = args.model == DEFAULT_MODEL
    gemma = args.gemma_root or (DEFAULT_GEMMA if default else None)
    spatial = args.spatial_upsampler_path or ([DEFAULT_SPATIAL_UPSAMPLER] if default else [])
    return ltx_mlx.load(args.model, loras, gemma_root=gemma, spatial_upsamplers=spatial,
                        distilled_lora=args.distilled_lora, dtype=args.dtype, progress=not args.quiet)


def run(args) -> int:
    from ..media import output_lock
    from ..pipelines.settings import check_request

    # Cheap checks first: sizes, frames, images, output path — before downloading or loading anything.
    check_request(args.pipeline, height=args.height, width=args.width, num_frames=args.num_frames,
                  frame_rate=args.frame_rate, images=args.images, output_path=args.output_path, prompt=args.prompt,
                  audio_path=args.audio_path, audio_start_time=args.audio_start_time,
                  audio_max_duration=args.audio_max_duration, video_path=args.video_path,
                  start_time=args.start_time, end_time=args.end_time, negative_prompt=args.negative_prompt,
                  num_inference_steps=args.num_inference_steps, video_guidance=_guidance(args, "video", "a2v"),
                  audio_guidance=_guidance(args, "audio", "v2a"),
                  distilled_lora_strengths=(args.distilled_lora_strength_stage_1, args.distilled_lora_strength_stage_2))
    with output_lock(args.output_path):  # a second run to this path is refused now, not after loading
        result = _generate(args)
    if args.verbose:
        total = sum(result.timings.values())
        print(f"total {total:.1f} s; peak memory {max(result.peak_memory.values()) / 1e9:.2f} GB", file=sys.stderr)
    print(f"wrote {args.output_path}")
    return 0


def _generate(args):
    pipe = _load(args)
    return pipe.generate(
        args.prompt, pipeline=args.pipeline, negative_prompt=args.negative_prompt, seed=args.seed,
        height=args.height, width=args.width, num_frames=args.num_frames, frame_rate=args.frame_rate,
        num_inference_steps=args.num_inference_steps, images=args.images,
        video_guidance=_guidance(args, "video", "a2v"), audio_guidance=_guidance(args, "audio", "v2a"),
        audio=not args.no_audio,
        distilled_lora_strengths=(args.distilled_lora_strength_stage_1, args.distilled_lora_strength_stage_2),
        output_path=args.output_path, keep_frames=False, audio_path=args.audio_path,
        audio_start_time=args.audio_start_time, audio_max_duration=args.audio_max_duration,
        video_path=args.video_path, start_time=args.start_time, end_time=args.end_time,
        distilled={"auto": None, "distilled": True, "dev": False}[args.checkpoint_kind], progress=not args.quiet,
        verbose=args.verbose, low_memory=args.low_memory,
        batch_guidance=args.batch_guidance)


def main(argv=None) -> int:
    cache = _cache_command(argv)
    if cache is not None:
        return cache
    args = build_parser().parse_args(argv)
    from ..weights.checkpoint import CheckpointError

    try:
        return run(args)
    except KeyboardInterrupt:
        print("generate.py: interrupted; no output was written", file=sys.stderr)
        return 130
    except (ValueError, CheckpointError, OSError) as e:
        print(f"generate.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except MemoryError as e:  # a stage ran out of memory (Generation.stage names it)
        print(f"generate.py: error: {' '.join(str(e).split()) or 'out of memory'}; no output was written",
              file=sys.stderr)
        return 1
    except RuntimeError as e:  # MLX reports allocation failures outside a stage as RuntimeError
        reason = " ".join(str(e).split()) or type(e).__name__
        print(f"generate.py: error: the run failed ({reason}); if memory ran out, try a smaller --height/--width "
              "or fewer --num-frames, or a quantized model (convert.py -q); no output was written", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
