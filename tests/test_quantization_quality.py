"""How much each quantization the converter offers changes the weights and what a pipeline produces.

A tiny LTX-2.3 checkpoint and Gemma folder get weights with the outliers real checkpoints have: Student-t
(3 degrees of freedom) entries, a log-normal spread of row scales and a few input channels ten times larger
than the rest, all from fixed seeds. Each case converts it once (transformer and Gemma with the same plan) and
opens it with `ltx_mlx.load`; a float32 conversion is the reference. Transformer quantization is measured on the
denoised video and audio latents of a distilled-style stage from injected noise, with the float Gemma's
contexts; Gemma quantization on the contexts it produces and on the latents the float transformer denoises from
them; both on the dequantized weights. Errors are rms(quantized - float) / rms(float); bounds sit at the measured
level with a margin on both sides (a layer silently left dense lowers the error), and the cases must order as
their bits do.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch

import ltx_mlx
from convert_fixtures import write_official
from ltx_mlx.convert import ConvertOptions, convert
from ltx_mlx.diffusion import DISTILLED_SIGMA_VALUES
from ltx_mlx.pipelines.common import Generation, euler_loop, simple
from ltx_mlx.pipelines.settings import resolve_settings
from ltx_mlx.weights.convert import quantization_plans
from ltx_mlx.weights.quantize import MODES, SUPPORTED, quantized_layers
from ltx_mlx.models.transformer import X0Model
from pipeline_fixtures import VIDEO_LATENT_CHANNELS, pipeline_overrides
from text_fixtures import TINY_TEXT, save_gemma_folder, tiny_gemma

# Video and audio streams 128 wide (FFs 512): every block linear groups by 16, 32, 64 and 128.
LAYERS = 3  # mixed precision with one edge block keeps the middle block at the low bits
DIMS = dict(num_layers=LAYERS, num_attention_heads=2, attention_head_dim=64, audio_num_attention_heads=2,
            audio_attention_head_dim=64)
PROMPT = "a red car runs on the beach at sunset"
H, W, FRAMES = 64, 128, 17
MAX_LENGTH = 128
ATTENTIONS = ("attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")
FEED_FORWARDS = ("ff.net.0.proj", "ff.net.2", "audio_ff.net.0.proj", "audio_ff.net.2")
GEMMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj")

BOTH = ("transformer", "gemma")
# name -> quantization_plans(bits, group_size, mode, components, high_bits, edge_blocks)
CASES = {
    "q8": (8, 64, "affine", BOTH, None, 0),
    "q4": (4, 64, "affine", BOTH, None, 0),
    "q4-g32": (4, 32, "affine", BOTH, None, 0),
    "q4-g128": (4, 128, "affine", ("transformer",), None, 0),  # Gemma's 64-wide inputs cannot be grouped by 128
    "q4-mixed": (4, 64, "affine", BOTH, 8, 1),
    "mxfp8": (8, 32, "mxfp8", BOTH, None, 0),
    "mxfp4": (4, 32, "mxfp4", BOTH, None, 0),
    "nvfp4": (4, 16, "nvfp4", BOTH, None, 0),
}
# Measured rms(quantized - float) / rms(float) (mlx 0.32.4, CPU, float32). "weights": all quantized layers' weights;
# "dit": latents of the quantized transformer from float contexts; "ctx": the quantized Gemma's contexts; "text":
# latents of the float transformer from those contexts.
EXPECTED = {
    "q8": {"transformer weights": 0.0091, "gemma weights": 0.009,
           "dit video": 0.0137, "dit audio": 0.0089, "ctx video": 0.0133, "ctx audio": 0.0137,
           "text video": 0.0016, "text audio": 0.0014},
    "q4": {"transformer weights": 0.1393, "gemma weights": 0.1395,
           "dit video": 0.1256, "dit audio": 0.1811, "ctx video": 0.2234, "ctx audio": 0.2032,
           "text video": 0.0230, "text audio": 0.0197},
    "q4-g32": {"transformer weights": 0.1024, "gemma weights": 0.1031,
               "dit video": 0.1272, "dit audio": 0.1025, "ctx video": 0.1489, "ctx audio": 0.1506,
               "text video": 0.0149, "text audio": 0.0152},
    "q4-g128": {"transformer weights": 0.1864, "dit video": 0.1745, "dit audio": 0.1359},
    "q4-mixed": {"transformer weights": 0.0805, "gemma weights": 0.1169,
                 "dit video": 0.0606, "dit audio": 0.0926, "ctx video": 0.1060, "ctx audio": 0.1074,
                 "text video": 0.0097, "text audio": 0.0152},
    "mxfp8": {"transformer weights": 0.0263, "gemma weights": 0.0277,
              "dit video": 0.0263, "dit audio": 0.0302, "ctx video": 0.0338, "ctx audio": 0.0328,
              "text video": 0.0041, "text audio": 0.0047},
    "mxfp4": {"transformer weights": 0.1633, "gemma weights": 0.1643,
              "dit video": 0.3810, "dit audio": 0.1774, "ctx video": 0.1862, "ctx audio": 0.1875,
              "text video": 0.0215, "text audio": 0.0228},
    "nvfp4": {"transformer weights": 0.0852, "gemma weights": 0.086,
              "dit video": 0.0848, "dit audio": 0.1087, "ctx video": 0.1302, "ctx audio": 0.1260,
              "text video": 0.0100, "text audio": 0.0137},
}
MARGIN = 1.25  # each error within [measured / 1.25, measured x 1.25]
WEIGHT_MARGIN = 1.05  # weight errors depend on the quantizer alone


def with_outliers(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A (out, in) weight with heavy tails, spread row scales and a few large input channels, at w's std."""
    out_dim, in_dim = w.shape
    x = rng.standard_t(3, size=w.shape)
    x *= np.exp(rng.normal(0.0, 0.5, (out_dim, 1)))
    x[:, rng.choice(in_dim, max(1, in_dim // 64), replace=False)] *= 10.0
    return (x * (w.std() / x.std())).astype(np.float32)


def outlier_transformer(tensors: dict) -> dict:
    rng = np.random.default_rng(11)
    for key in sorted(tensors):
        v = tensors[key]
        if key.startswith("model.diffusion_model.transformer_blocks.") and key.endswith(".weight") and v.ndim == 2:
            tensors[key] = torch.from_numpy(with_outliers(v.numpy(), rng))
    return tensors


def outlier_gemma(folder):
    model = tiny_gemma("multimodal", seed=7)
    rng = np.random.default_rng(12)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".layers." in name and "language_model" in name and name.endswith("_proj.weight"):
                p.copy_(torch.from_numpy(with_outliers(p.numpy(), rng)))
    save_gemma_folder(model, folder)


def rms_rel(a, b) -> float:
    a, b = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    return float(np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()))


def weight_error(quantized, dense) -> float:
    """rms(dequantized - float) / rms(float) over all the quantized layers' weights together."""
    floats = dict(dense.named_modules())
    diff = norm = 0.0
    for path, m in quantized.named_modules():
        if isinstance(m, nn.QuantizedLinear):
            w = mx.dequantize(m.weight, m.scales, m.get("biases"), group_size=m.group_size, bits=m.bits, mode=m.mode,
                              dtype=mx.float32)
            ref = np.array(floats[path].weight, dtype=np.float64)
            diff += float(((np.array(w, dtype=np.float64) - ref) ** 2).sum())
            norm += float((ref ** 2).sum())
    return float(np.sqrt(diff / norm))


def contexts(bundle):
    return bundle.text_encoder(max_length=MAX_LENGTH).encode([PROMPT])[0]


def denoise(bundle, transformer, context):
    """A distilled-style stage (the 8 distilled sigmas, simple denoising) from fixed injected noise."""
    def settings(noise):
        return resolve_settings("distilled", bundle.model_version, LAYERS, prompt=PROMPT, height=H, width=W,
                                num_frames=FRAMES, frame_rate=24.0, noise=noise)

    g0 = Generation(bundle, settings(()), progress=False)
    vt, at = g0.video_tools(H, W), g0.audio_tools()
    rng = np.random.default_rng(3)
    noise = {"video": mx.array(rng.standard_normal((1, vt.token_count, VIDEO_LATENT_CHANNELS)).astype(np.float32)),
             "audio": mx.array(rng.standard_normal((1, at.token_count, at.channels * at.mel_bins)).astype(np.float32))}
    g = Generation(bundle, settings((noise,)), progress=False)
    video, audio = g.denoise("stage 1", 0, euler_loop(simple(X0Model(transformer), context)), DISTILLED_SIGMA_VALUES,
                             vt, at)
    mx.eval(video, audio)
    return np.array(video), np.array(audio)


class Runs:
    """Converts each case once, on first use, and keeps its measured errors."""

    def __init__(self, tmp):
        self.tmp = tmp
        outlier_gemma(tmp / "gemma")
        self.ckpt, self.gemma, _ = write_official(tmp, "2.3", transform=outlier_transformer, **pipeline_overrides("2.3"),
                                                  **DIMS)
        self.float = self.open("float32", {})
        self.float_context = contexts(self.float)
        self.float_latents = denoise(self.float, self.float.transformer(), self.float_context)
        self.errors = {}

    def open(self, name, plans):
        out = convert(str(self.ckpt), str(self.tmp / name), str(self.gemma),
                      options=ConvertOptions(dtype="float32", quantize=plans, progress=False, force=True))
        return ltx_mlx.load(out)

    def __call__(self, case: str) -> dict:
        if case not in self.errors:
            plans = quantization_plans(*CASES[case])
            bundle = self.open(case, plans)
            err = {"layers": {name: quantized_layers(bundle.get(name)) for name in plans}}
            for name in plans:
                err[f"{name} weights"] = weight_error(bundle.get(name), self.float.get(name))
            if "transformer" in plans:
                latents = denoise(bundle, bundle.transformer(), self.float_context)
                err["dit video"], err["dit audio"] = (rms_rel(q, f) for q, f in zip(latents, self.float_latents))
            if "gemma" in plans:
                ctx = contexts(bundle)
                err["ctx video"] = rms_rel(ctx.video, self.float_context.video)
                err["ctx audio"] = rms_rel(ctx.audio, self.float_context.audio)
                latents = denoise(self.float, self.float.transformer(), ctx)
                err["text video"], err["text audio"] = (rms_rel(q, f) for q, f in zip(latents, self.float_latents))
            bundle.free()
            self.errors[case] = err
            print(f"{case:>9}: " + ", ".join(f"{k} {v:.4f}" for k, v in err.items() if k != "layers"))
        return self.errors[case]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("quality"))


def expected_layers(case: str) -> dict[str, dict[str, int]]:
    """Every block linear of both models (gate logits excepted), with the bits the plan gives it."""
    bits, _, _, components, high, edge = CASES[case]
    dit = {f"transformer_blocks.{i}.{a}.{p}": i for i in range(LAYERS) for a in ATTENTIONS
           for p in ("to_q", "to_k", "to_v", "to_out.0")}
    dit |= {f"transformer_blocks.{i}.{f}": i for i in range(LAYERS) for f in FEED_FORWARDS}
    n = TINY_TEXT["num_hidden_layers"]
    gemma = {f"layers.{i}.{p}": i for i in range(n) for p in GEMMA_LINEARS}
    out = {}
    for name, layers, blocks in (("transformer", dit, LAYERS), ("gemma", gemma, n)):
        if name in components:
            out[name] = {p: high if high and (i < edge or i >= blocks - edge) else bits for p, i in layers.items()}
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_quantization_error_is_the_measured_one(runs, case):
    err = runs(case)
    assert err["layers"] == expected_layers(case)
    for metric, want in EXPECTED[case].items():
        margin = WEIGHT_MARGIN if metric.endswith("weights") else MARGIN
        assert want / margin <= err[metric] <= want * margin, (case, metric, err[metric], want)


def test_more_bits_less_error(runs):
    for metric in EXPECTED["q4"]:
        assert runs("q8")[metric] < 0.25 * runs("q4")[metric], metric
        assert runs("q4-mixed")[metric] < 0.9 * runs("q4")[metric], metric  # 8-bit edge blocks help
        assert runs("mxfp8")[metric] < 0.5 * runs("mxfp4")[metric], metric
        assert runs("nvfp4")[metric] < runs("mxfp4")[metric], metric  # groups of 16 with fp8 scales
    for metric in EXPECTED["q4-g128"]:
        assert runs("q4-g32")[metric] < runs("q4-g128")[metric], metric


def test_every_offered_setting_is_measured():
    """Each mode, bits and group size that QuantizationPlan.validate (and so the CLI) accepts has a case above."""
    for mode, (bits, groups) in SUPPORTED.items():
        assert set(bits) <= {c[0] for c in CASES.values() if c[2] == mode}, mode
        assert set(groups) <= {c[1] for c in CASES.values() if c[2] == mode}, mode
    assert set(SUPPORTED) == set(MODES)
