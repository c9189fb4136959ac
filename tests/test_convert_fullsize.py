"""Full-size conversion plans without the weights: official LTX-2 / LTX-2.3 checkpoints and the Gemma-3 12B folder
are written as *sparse* safetensors files (real headers from the reference built on torch's meta device, no data on
disk); `plan_conversion` routes every key, builds each component lazily, picks the quantized layers and checks every
converted name and shape — all before a single weight would be read."""

import copy
import json
import struct
import time

import pytest
import torch
from ltx_core.model.audio_vae import AudioDecoderConfigurator, AudioEncoderConfigurator, VocoderConfigurator
from ltx_core.model.transformer import LTXModelConfigurator
from ltx_core.model.upsampler import LatentUpsamplerConfigurator
from ltx_core.model.video_vae import VideoDecoderConfigurator, VideoEncoderConfigurator
from ltx_core.text_encoders.gemma.config import GEMMA3_CONFIG_FOR_LTX
from ltx_core.text_encoders.gemma.encoders.encoder_configurator import EmbeddingsProcessorConfigurator
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

from dit_reference import FULL
from ltx_mlx.weights.convert import ConvertOptions, plan_conversion, quantization_plans
from ltx_mlx.models.text_projection import PREFIXES
from text_fixtures import write_tokenizer

ENC23 = [["res_x", {"num_layers": 4}], ["compress_space_res", {"multiplier": 2}], ["res_x", {"num_layers": 6}],
         ["compress_time_res", {"multiplier": 2}], ["res_x", {"num_layers": 4}], ["compress_all_res", {"multiplier": 2}],
         ["res_x", {"num_layers": 2}], ["compress_all_res", {"multiplier": 1}], ["res_x", {"num_layers": 2}]]
DEC23 = [["res_x", {"num_layers": 4}], ["compress_space", {"multiplier": 2}], ["res_x", {"num_layers": 6}],
         ["compress_time", {"multiplier": 2}], ["res_x", {"num_layers": 4}], ["compress_all", {"multiplier": 1}],
         ["res_x", {"num_layers": 2}], ["compress_all", {"multiplier": 2}], ["res_x", {"num_layers": 2}]]
VAE = {"dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128, "patch_size": 4, "norm_layer": "pixel_norm",
       "latent_log_var": "uniform", "causal_decoder": False, "timestep_conditioning": False, "decoder_base_channels": 128,
       "encoder_blocks": ENC23, "decoder_blocks": DEC23, "spatial_padding_mode": "zeros"}
AUDIO = {"model": {"params": {"sampling_rate": 16000, "ddconfig": {
    "ch": 128, "out_ch": 2, "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], "in_channels": 2,
    "resolution": 256, "z_channels": 8, "norm_type": "pixel", "causality_axis": "height", "dropout": 0.0,
    "mid_block_add_attention": False, "mel_bins": 64, "double_z": True}}},
    "preprocessing": {"stft": {"hop_length": 160, "filter_length": 1024, "causal": True}, "mel": {"n_mel_channels": 64}}}
AMP = {"resblock": "AMP1", "stereo": True, "activation": "snakebeta", "use_tanh_at_final": False, "use_bias_at_final": False}
VOCODERS = {
    "ltx-2": {"resblock": "1", "stereo": True, "upsample_initial_channel": 1024},
    "ltx-2.3": {"vocoder": dict(AMP, upsample_initial_channel=1536, upsample_rates=[5, 2, 2, 2, 2, 2],
                                upsample_kernel_sizes=[11, 4, 4, 4, 4, 4]),
                "bwe": dict(AMP, upsample_initial_channel=512, upsample_rates=[6, 5, 2, 2, 2],
                            upsample_kernel_sizes=[12, 11, 4, 4, 4], apply_final_activation=False,
                            input_sampling_rate=16000, output_sampling_rate=48000, hop_length=80, n_fft=512, num_mels=64)},
}
UPSAMPLER = {"in_channels": 128, "mid_channels": 512, "num_blocks_per_stage": 4, "dims": 3, "spatial_upsample": True}
GB = 1e9


def write_sparse(path, shapes: dict, metadata: dict) -> int:
    """A safetensors file with real headers and a hole where the data would be; returns its (apparent) size."""
    header, offset = {"__metadata__": metadata}, 0
    for key, shape in shapes.items():
        n = 2
        for d in shape:
            n *= d
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    return 8 + len(blob) + offset


def shapes_of(module, prefix="") -> dict:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def vae_shapes(prefix, enc, dec) -> dict:
    out = {}
    for part, module in (("encoder.", enc), ("decoder.", dec)):
        for k, s in shapes_of(module).items():
            out[(prefix + k) if k.startswith("per_channel_statistics.") else prefix + part + k] = s
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fullsize")
    gemma = tmp / "gemma"
    gemma.mkdir()
    with torch.device("meta"):
        hf = Gemma3ForConditionalGeneration(Gemma3Config(**GEMMA3_CONFIG_FOR_LTX.to_dict()))
        write_sparse(gemma / "model.safetensors", shapes_of(hf), {"format": "pt"})
        up = LatentUpsamplerConfigurator.from_config(UPSAMPLER)
        write_sparse(tmp / "upsampler.safetensors", shapes_of(up), {"config": json.dumps(UPSAMPLER)})
        out = {}
        for version, t in FULL.items():
            config = {"transformer": copy.deepcopy(t), "vae": VAE, "audio_vae": AUDIO, "vocoder": VOCODERS[version]}
            shapes = shapes_of(LTXModelConfigurator.from_config(config), "model.diffusion_model.")
            for k, s in shapes_of(EmbeddingsProcessorConfigurator.from_config(config)).items():
                head, rest = k.split(".", 1)
                shapes[PREFIXES[head + "."] + rest] = s
            shapes.update(vae_shapes("vae.", VideoEncoderConfigurator.from_config(config),
                                     VideoDecoderConfigurator.from_config(config)))
            shapes.update(vae_shapes("audio_vae.", AudioEncoderConfigurator.from_config(config),
                                     AudioDecoderConfigurator.from_config(config)))
            shapes.update(shapes_of(VocoderConfigurator.from_config(config), "vocoder."))
            path = tmp / f"{version}.safetensors"
            size = write_sparse(path, shapes, {"config": json.dumps(config),
                                               "model_version": "2.3.0" if version == "ltx-2.3" else "2.0.0"})
            out[version] = (path, size)
    (gemma / "config.json").write_text(json.dumps(GEMMA3_CONFIG_FOR_LTX.to_dict()))
    write_tokenizer(gemma)
    return out, gemma, tmp / "upsampler.safetensors"


@pytest.mark.parametrize("version", sorted(FULL))
def test_full_size_plans(files, version):
    ckpts, gemma, upsampler = files
    ckpt, size = ckpts[version]
    sizes = {}
    for label, plans in (("bf16", {}), ("q8", quantization_plans(8, 64)), ("q4", quantization_plans(4, 64)),
                         ("q4 mixed", quantization_plans(4, 64, high_bits=8, edge_blocks=2))):
        t = time.time()
        conv = plan_conversion(str(ckpt), str(gemma), (str(upsampler),), (), ConvertOptions(quantize=plans))
        elapsed = time.time() - t
        jobs = {j.entry["folder"]: j for j in conv.jobs}
        assert list(jobs) == ["transformer", "text_projection", "video_encoder", "video_decoder", "audio_encoder",
                              "audio_decoder", "vocoder", "gemma", "spatial_upsampler_x2"]
        sizes[label] = {k: j.out_bytes for k, j in jobs.items()}
        if plans:
            bits = plans["transformer"].bits
            dit, text = jobs["transformer"].quantized, jobs["gemma"].quantized
            assert len(dit) == 48 * 28 and len(text) == 48 * 7  # 6 attentions x 4 + 4 FF linears; 4 + 3 per layer
            high = {p for p, (_, b, _) in dit.items() if b != bits}
            assert high == ({p for p in dit if p.split(".")[1] in ("0", "1", "46", "47")} if "mixed" in label else set())
            assert all(j.quantized == {} for k, j in jobs.items() if k not in ("transformer", "gemma"))
        print(f"{version} {label}: planned in {elapsed:.1f} s; transformer {sizes[label]['transformer'] / GB:.2f} GB, "
              f"Gemma {sizes[label]['gemma'] / GB:.2f} GB, all {sum(sizes[label].values()) / GB:.2f} GB")
    bf16 = sizes["bf16"]
    ltx_part = sum(v for k, v in bf16.items() if k not in ("gemma", "spatial_upsampler_x2"))
    assert abs(ltx_part - size) < 0.001 * size  # bf16 in, bf16 out: the same bytes
    assert sizes["q8"]["transformer"] < 0.56 * bf16["transformer"]
    assert sizes["q4"]["transformer"] < 0.32 * bf16["transformer"]
    assert sizes["q4"]["gemma"] < 0.45 * bf16["gemma"]  # the 262k x 3840 embedding stays bf16
    assert sizes["q4"]["transformer"] < sizes["q4 mixed"]["transformer"] < sizes["q8"]["transformer"]
