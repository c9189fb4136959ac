"""Vocoders: log-mel (B, 2, T, 64) → stereo waveform (B, 2, N).

LTX-2 ships a HiFi-GAN generator (24 kHz); LTX-2.3 a BigVGAN-v2 generator (16 kHz) followed by a
bandwidth-extension stage to 48 kHz. The choice follows the reference: a `"bwe"` entry in
`config["vocoder"]` selects the BWE vocoder. Channels-last inside: waveforms are (B, N, C).

MLX's CPU backend runs dilated and transposed convolutions as scalar loops, so both are rewritten
here as ordinary convolutions: dilation by splitting time into phases, transposition as a polyphase
conv whose output channels are interleaved back into time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import mlx.core as mx
import mlx.nn as nn
import numpy as np


from .base import BaseConfig

VOCODER_PREFIX = "vocoder."
# The reference hard-wires conv_pre to 128 inputs: stereo × 64 mel bins.
MEL_CHANNELS = 128
LRELU_SLOPE = 0.1


def _tuple(v):
    return tuple(_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v


@dataclass
class GeneratorConfig(BaseConfig):
    """One generator's section; defaults are the reference's `_vocoder_from_config` defaults."""

    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    upsample_rates: tuple[int, ...] = (6, 5, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 15, 8, 4, 4)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    upsample_initial_channel: int = 1024
    resblock: str = "1"
    output_sampling_rate: int = 24000
    activation: str = "snake"
    use_tanh_at_final: bool = True
    use_bias_at_final: bool = True
    apply_final_activation: bool = True

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> "GeneratorConfig":
        kw = {k: _tuple(v) for k, v in d.items() if k != "apply_final_activation"}  # not a file key
        return super().from_dict({**kw, **overrides})

    def validate(self):
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError(f"vocoder config: upsample_rates {list(self.upsample_rates)} and upsample_kernel_sizes "
                             f"{list(self.upsample_kernel_sizes)} differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError(f"vocoder config: resblock_kernel_sizes {list(self.resblock_kernel_sizes)} and "
                             f"resblock_dilation_sizes {list(self.resblock_dilation_sizes)} differ in length")
        for dil in self.resblock_dilation_sizes:
            if len(dil) < 3:
                raise ValueError(f"vocoder config: resblock_dilation_sizes entries need 3 dilations, got {list(dil)}")


@dataclass
class BWEConfig(BaseConfig):
    input_sampling_rate: int
    output_sampling_rate: int
    hop_length: int
    n_fft: int
    num_mels: int


@dataclass
class VocoderConfig(BaseConfig):
    vocoder: GeneratorConfig
    bwe_generator: GeneratorConfig | None = None
    bwe: BWEConfig | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "VocoderConfig":
        """`config["vocoder"]`: flat for LTX-2 (HiFi-GAN), `{vocoder, bwe}` for LTX-2.3 (BigVGAN + BWE)."""
        if "bwe" not in d:
            _expect(d, "vocoder", resblock="1", stereo=True)
            return cls(GeneratorConfig.from_dict(d))
        main, bwe = d.get("vocoder", {}), d["bwe"]
        _expect(main, "vocoder.vocoder", resblock="AMP1", stereo=True, activation="snakebeta")
        _expect(bwe, "vocoder.bwe", resblock="AMP1", stereo=True, activation="snakebeta")
        missing = [f.name for f in fields(BWEConfig) if f.name not in bwe]
        if missing:
            raise ValueError(f"vocoder config: the 'bwe' section lacks {missing}")
        b = BWEConfig.from_dict(bwe)
        return cls(GeneratorConfig.from_dict(main, output_sampling_rate=b.input_sampling_rate),
                   GeneratorConfig.from_dict(bwe, apply_final_activation=False,
                                             output_sampling_rate=b.output_sampling_rate), b)


def _expect(d: dict, where: str, **values):
    for key, want in values.items():
        if d.get(key) != want:
            raise ValueError(f"{where}.{key} is {d.get(key)!r}; this vocoder needs {want!r}")


def _pad_time(x, left: int, right: int, mode: str = "constant"):
    return mx.pad(x, [(0, 0), (left, right), (0, 0)], mode=mode) if left or right else x


def conv1d_valid(x: mx.array, w: mx.array, dilation: int = 1) -> mx.array:
    """Unpadded conv of (B, L, I) with (O, K, I); dilation d as d interleaved undilated convs."""
    d = dilation
    if d == 1:
        return mx.conv1d(x, w)
    B, L, C = x.shape
    n_out = L - d * (w.shape[1] - 1)
    Lp = -(-L // d) * d
    x = _pad_time(x, 0, Lp - L).reshape(B, Lp // d, d, C).transpose(0, 2, 1, 3).reshape(B * d, Lp // d, C)
    y = mx.conv1d(x, w)
    y = y.reshape(B, d, y.shape[1], -1).transpose(0, 2, 1, 3).reshape(B, d * y.shape[1], -1)
    return y[:, :n_out]


class Conv1d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, dilation: int = 1, padding=(0, 0), bias: bool = True):
        super().__init__()
        scale = 1 / math.sqrt(cin * k)
        self.weight = mx.random.uniform(-scale, scale, (cout, k, cin))
        if bias:
            self.bias = mx.zeros((cout,))
        self.dilation, self.padding = dilation, padding

    def __call__(self, x):
        y = conv1d_valid(_pad_time(x, *self.padding), self.weight, self.dilation)
        return y + self.bias if "bias" in self else y


class ConvTranspose1d(nn.Module):
    """Stride-s transposed conv computed as one conv with s·O channels, one per output phase."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int):
        super().__init__()
        scale = 1 / math.sqrt(cout * k)
        self.weight = mx.random.uniform(-scale, scale, (cout, k, cin))
        self.bias = mx.zeros((cout,))
        self.stride, self.padding = stride, padding

    def __call__(self, x):
        B, L, _ = x.shape
        O, K, I = self.weight.shape
        s = self.stride
        J = -(-K // s)
        # Output sample q·s + r = Σ_j x[q − j] · W[r + j·s]: tap j of phase r, reversed for correlation.
        w = mx.pad(self.weight, [(0, 0), (0, J * s - K), (0, 0)]).reshape(O, J, s, I)[:, ::-1]
        w = w.transpose(2, 0, 1, 3).reshape(s * O, J, I)
        y = mx.conv1d(_pad_time(x, J - 1, J - 1), w).reshape(B, (L + J - 1) * s, O)
        n_out = (L - 1) * s - 2 * self.padding + K
        return y[:, self.padding: self.padding + n_out] + self.bias


def _polyphase_upsample(x: mx.array, f: mx.array, s: int, crop_left: int, n_out: int) -> mx.array:
    """Depthwise transposed conv of (B, L, C) with the 1-D filter f at stride s, cropped to [crop_left, +n_out)."""
    B, L, C = x.shape
    K = f.shape[0]
    J = -(-K // s)
    taps = mx.pad(f, (0, J * s - K)).reshape(J, s, 1)
    xz = _pad_time(x, J - 1, J - 1)[:, :, None, :]
    Q = L + J - 1
    y = sum(xz[:, J - 1 - j: J - 1 - j + Q] * taps[j] for j in range(J))
    return y.reshape(B, Q * s, C)[:, crop_left: crop_left + n_out]


class UpSample1d(nn.Module):
    """BigVGAN ×ratio upsampler with the checkpoint's Kaiser-sinc filter (replicate padding)."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.ratio = ratio
        self.filter = mx.zeros((1, 1, kernel_size))

    def __call__(self, x):
        K, s = self.filter.shape[-1], self.ratio
        pad = K // s - 1
        crop_left = pad * s + (K - s) // 2
        x = _pad_time(x, pad, pad, "edge")
        y = _polyphase_upsample(x, self.filter.reshape(-1), s, crop_left, (x.shape[1] - 2 * pad) * s)
        return s * y


class LowPassFilter1d(nn.Module):
    def __init__(self, stride: int = 2, kernel_size: int = 12):
        super().__init__()
        self.stride = stride
        self.filter = mx.zeros((1, 1, kernel_size))

    def __call__(self, x):
        K, s = self.filter.shape[-1], self.stride
        f = self.filter.reshape(-1)
        x = _pad_time(x, K // 2 - (K % 2 == 0), K // 2, "edge")
        n = (x.shape[1] - K) // s + 1
        return sum(x[:, k: k + s * (n - 1) + 1: s] * f[k] for k in range(K))


class DownSample1d(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.lowpass = LowPassFilter1d(ratio, kernel_size)

    def __call__(self, x):
        return self.lowpass(x)


def _sin_squared(z: mx.array) -> mx.array:
    """sin²(z). On the CPU a range-reduced odd polynomial (float32 error ~1e-7): MLX's CPU sin is ~3× slower,
    and the Snake activations' sines are a third of the BigVGAN vocoder's CPU time."""
    if mx.default_device() != mx.cpu:
        return mx.square(mx.sin(z))
    z32 = z.astype(mx.float32)
    k = mx.round(z32 * (1 / math.pi))
    r = (z32 - k * 3.140625) - k * 9.676535897932e-4  # z − kπ, π split so that k·3.140625 is exact
    r2 = r * r
    p = 1 / 362880 + r2 * (-1 / 39916800)
    p = r + r * r2 * (-1 / 6 + r2 * (1 / 120 + r2 * (-1 / 5040 + r2 * p)))
    return mx.square(p).astype(z.dtype)  # sin²(z) = sin²(z − kπ)


class Snake(nn.Module):
    """x + sin²(e^α·x) / (e^α + 1e-9); SnakeBeta divides by e^β instead (log-scale parameters)."""

    def __init__(self, channels: int, beta: bool):
        super().__init__()
        self.alpha = mx.zeros((channels,))
        if beta:
            self.beta = mx.zeros((channels,))

    def __call__(self, x):
        alpha = mx.exp(self.alpha)
        beta = mx.exp(self.beta) if "beta" in self else alpha
        return x + _sin_squared(x * alpha) * (1.0 / (beta + 1e-9))


class Activation1d(nn.Module):
    """Anti-aliased activation: ×2 up, activation, ×2 down."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act
        self.upsample = UpSample1d(2, 12)
        self.downsample = DownSample1d(2, 12)

    def __call__(self, x):
        return self.downsample(self.act(self.upsample(x)))


class ResBlock1(nn.Module):
    """HiFi-GAN residual block (torch padding='same')."""

    def __init__(self, channels: int, k: int, dilations):
        super().__init__()
        def same(d):
            return ((k - 1) * d // 2, (k - 1) * d - (k - 1) * d // 2)

        self.convs1 = [Conv1d(channels, channels, k, d, same(d)) for d in dilations]
        self.convs2 = [Conv1d(channels, channels, k, 1, same(1)) for _ in dilations]

    def __call__(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(nn.leaky_relu(c1(nn.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class AMPBlock1(nn.Module):
    """BigVGAN-v2 residual block with anti-aliased Snake/SnakeBeta activations."""

    def __init__(self, channels: int, k: int, dilations, activation: str):
        super().__init__()
        beta = activation == "snakebeta"
        pad = [int((k * d - d) / 2) for d in dilations]
        self.convs1 = [Conv1d(channels, channels, k, d, (p, p)) for d, p in zip(dilations, pad)]
        p1 = int((k - 1) / 2)
        self.convs2 = [Conv1d(channels, channels, k, 1, (p1, p1)) for _ in dilations]
        self.acts1 = [Activation1d(Snake(channels, beta)) for _ in dilations]
        self.acts2 = [Activation1d(Snake(channels, beta)) for _ in dilations]

    def __call__(self, x):
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.acts1, self.acts2):
            x = x + c2(a2(c1(a1(x))))
        return x


def _stereo_mel(mel: mx.array) -> mx.array:
    """(B, 2, T, 64) → channels-last (B, T, 128), stereo-major like the reference's `b (s c) t`."""
    if mel.ndim != 4 or mel.shape[1] != 2 or mel.shape[3] * 2 != MEL_CHANNELS:
        raise ValueError(f"vocoder input must be a stereo log-mel of shape (batch, 2, frames, "
                         f"{MEL_CHANNELS // 2}), got {tuple(mel.shape)}")
    B, _, T, M = mel.shape
    return mel.transpose(0, 2, 1, 3).reshape(B, T, 2 * M)


class Vocoder(nn.Module):
    """HiFi-GAN (resblock "1") or BigVGAN-v2 (resblock "AMP1") generator."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.config = cfg
        self.output_sampling_rate = cfg.output_sampling_rate
        self.is_amp = cfg.resblock == "AMP1"
        C = cfg.upsample_initial_channel
        self.conv_pre = Conv1d(MEL_CHANNELS, C, 7, padding=(3, 3))
        self.ups = [ConvTranspose1d(C // 2 ** i, C // 2 ** (i + 1), k, s, (k - s) // 2)
                    for i, (s, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes))]
        self.resblocks = []
        for i in range(len(self.ups)):
            ch = C // 2 ** (i + 1)
            for k, dil in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                dil = dil[:3]  # the reference's blocks have exactly three conv pairs
                block = AMPBlock1(ch, k, dil, cfg.activation) if self.is_amp else ResBlock1(ch, k, dil)
                self.resblocks.append(block)
        final = C // 2 ** len(self.ups)
        if self.is_amp:
            self.act_post = Activation1d(Snake(final, beta=True))
        self.conv_post = Conv1d(final, 2, 7, padding=(3, 3), bias=cfg.use_bias_at_final)

    def __call__(self, mel: mx.array) -> mx.array:
        """Log-mel (B, 2, T, 64) → waveform (B, 2, N)."""
        return self.generate(_stereo_mel(mel)).transpose(0, 2, 1)

    def generate(self, x: mx.array) -> mx.array:
        """Channels-last (B, T, 128) → (B, N, 2)."""
        cfg, n = self.config, len(self.config.resblock_kernel_sizes)
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            if not self.is_amp:
                x = nn.leaky_relu(x, LRELU_SLOPE)
            x = up(x)
            x = sum(block(x) for block in self.resblocks[i * n: (i + 1) * n]) / n
        x = self.act_post(x) if self.is_amp else nn.leaky_relu(x, 0.01)
        x = self.conv_post(x)
        if cfg.apply_final_activation:
            x = mx.tanh(x) if cfg.use_tanh_at_final else mx.clip(x, -1, 1)
        return x


class STFTFn(nn.Module):
    """Causal STFT with the checkpoint's DFT×window bases: rows [0, n) real, [n, 2n) imaginary."""

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        self.hop_length = hop_length
        self.forward_basis = mx.zeros((2 * (n_fft // 2 + 1), 1, n_fft))
        self.inverse_basis = mx.zeros((2 * (n_fft // 2 + 1), 1, n_fft))  # unused; loaded for strictness

    def magnitude(self, y: mx.array) -> mx.array:
        """(N, L) → (N, frames, n_fft/2 + 1)."""
        n_fft, hop = self.forward_basis.shape[-1], self.hop_length
        y = mx.pad(y, [(0, 0), (max(0, n_fft - hop), 0)])
        N, L = y.shape
        frames = mx.as_strided(y, (N, (L - n_fft) // hop + 1, n_fft), (L, hop, 1))
        spec = frames @ self.forward_basis.reshape(-1, n_fft).T
        real, imag = mx.split(spec, 2, axis=-1)
        return mx.sqrt(real * real + imag * imag)


class MelSTFT(nn.Module):
    def __init__(self, n_fft: int, hop_length: int, n_mels: int):
        super().__init__()
        self.stft_fn = STFTFn(n_fft, hop_length)
        self.mel_basis = mx.zeros((n_mels, n_fft // 2 + 1))

    def __call__(self, y: mx.array) -> mx.array:
        """(N, L) → log-mel (N, frames, n_mels)."""
        mel = self.stft_fn.magnitude(y) @ self.mel_basis.T
        return mx.log(mx.maximum(mel, 1e-5))


def hann_sinc_filter(ratio: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """The BWE skip path's ×ratio interpolation filter (torchaudio-style Hann-windowed sinc)."""
    width = math.ceil(lowpass_filter_width / rolloff)
    t = (np.arange(2 * width * ratio + 1) / ratio - width) * rolloff
    window = np.cos(np.clip(t, -lowpass_filter_width, lowpass_filter_width) * np.pi / lowpass_filter_width / 2) ** 2
    return (np.sinc(t) * window * rolloff / ratio).astype(np.float32)


class VocoderWithBWE(nn.Module):
    """BigVGAN-v2 at the input rate, then a generator predicting the residual over a sinc-upsampled skip."""

    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        b = cfg.bwe
        self.config = cfg
        self.vocoder = Vocoder(cfg.vocoder)
        self.bwe_generator = Vocoder(cfg.bwe_generator)
        self.mel_stft = MelSTFT(b.n_fft, b.hop_length, b.num_mels)
        self.output_sampling_rate = b.output_sampling_rate
        self.ratio = b.output_sampling_rate // b.input_sampling_rate
        self._skip_filter = hann_sinc_filter(self.ratio)  # numpy: not a checkpoint tensor

    def __call__(self, mel: mx.array) -> mx.array:
        """Log-mel (B, 2, T, 64) → waveform (B, 2, N·out/in), clipped to [−1, 1]."""
        b = self.config.bwe
        x = self.vocoder.generate(_stereo_mel(mel))
        B, L, S = x.shape
        n_out = L * b.output_sampling_rate // b.input_sampling_rate
        x = _pad_time(x, 0, -L % b.hop_length)
        logmel = self.mel_stft(x.transpose(0, 2, 1).reshape(B * S, -1))
        logmel = logmel.reshape(B, S, *logmel.shape[1:]).transpose(0, 2, 1, 3)
        residual = self.bwe_generator.generate(logmel.reshape(B, logmel.shape[1], -1))
        skip = self._skip(x)
        if residual.shape != skip.shape:
            raise ValueError(f"vocoder config: the BWE generator gives {residual.shape[1]} samples but the "
                             f"×{self.ratio} skip path {skip.shape[1]}; hop_length and upsample_rates disagree")
        return mx.clip(residual + skip, -1, 1)[:, :n_out].transpose(0, 2, 1)

    def _skip(self, x: mx.array) -> mx.array:
        f, s = mx.array(self._skip_filter).astype(x.dtype), self.ratio
        width = (f.shape[0] - 1) // (2 * s)
        x = _pad_time(x, width, width, "edge")
        return s * _polyphase_upsample(x, f, s, 2 * width * s, (x.shape[1] - 2 * width) * s)


def build_vocoder(config: dict) -> Vocoder | VocoderWithBWE:
    """The vocoder that `config["vocoder"]` describes, with untrained weights."""
    cfg = VocoderConfig.from_dict(config.get("vocoder", {}))
    return VocoderWithBWE(cfg) if cfg.bwe is not None else Vocoder(cfg.vocoder)


_CONV_PARENTS = ("convs1", "convs2")


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Reference-named vocoder tensors (prefix stripped) → our layout.

    Conv1d (O, I, K) → (O, K, I); ConvTranspose1d (`ups.i`, stored (I, O, K)) → (O, K, I).
    Filters, Snake parameters and STFT/mel bases are used as stored.
    """
    out = {}
    for key, w in weights.items():
        parts = key.split(".")
        if parts[-1] == "weight" and len(parts) >= 3 and parts[-3] == "ups":
            w = mx.contiguous(w.transpose(1, 2, 0))
        elif parts[-1] == "weight" and (parts[-2] in ("conv_pre", "conv_post")
                                        or (len(parts) >= 3 and parts[-3] in _CONV_PARENTS)):
            w = mx.contiguous(w.transpose(0, 2, 1))
        out[key] = w
    return out
