"""The models' configs share one base: unknown keys are ignored, and a bad value is a ValueError that names the
key, the value and what is allowed."""

import pytest

from ltx_mlx.models.audio_vae import AudioVAEConfig
from ltx_mlx.models.base import BaseConfig
from ltx_mlx.models.gemma3 import Gemma3Config
from ltx_mlx.models.text_projection import ConnectorConfig, TextProjectionConfig
from ltx_mlx.models.transformer import TransformerConfig
from ltx_mlx.models.upsampler import UpsamplerConfig
from ltx_mlx.models.video_vae import VideoVAEConfig
from ltx_mlx.models.vocoder import BWEConfig, GeneratorConfig, VocoderConfig

from dit_reference import tiny_config

CONFIGS = [TransformerConfig, VideoVAEConfig, AudioVAEConfig, UpsamplerConfig, ConnectorConfig, TextProjectionConfig,
           Gemma3Config, GeneratorConfig, BWEConfig, VocoderConfig]


def test_every_config_is_a_base_config():
    assert all(issubclass(c, BaseConfig) for c in CONFIGS)


def test_unknown_keys_are_ignored():
    t = dict(tiny_config("2"), some_future_key=3)
    assert TransformerConfig.from_dict(t).num_layers == 2
    assert VideoVAEConfig.from_dict({"latent_channels": 8, "future": 1}).latent_channels == 8
    assert UpsamplerConfig.from_dict({"mid_channels": 64, "_class_name": "LatentUpsampler"}).mid_channels == 64
    gemma = Gemma3Config.from_dict({"num_hidden_layers": 7, "model_type": "gemma3_text"})
    assert gemma.layer_types[5] == "full_attention"
    assert GeneratorConfig.from_dict({"upsample_initial_channel": 64, "stereo": True}).upsample_initial_channel == 64
    assert AudioVAEConfig.from_dict({"model": {"params": {"ddconfig": {"ch": 32, "dropout": 0.0}}}}).ch == 32
    assert ConnectorConfig.from_dict({"connector_num_layers": 3, "unrelated": 1}).num_layers == 3


@pytest.mark.parametrize("build,key,value", [
    (lambda: TransformerConfig.from_dict(dict(tiny_config("2"), rope_type="spiral")), "rope_type", "'spiral'"),
    (lambda: TransformerConfig.from_dict(dict(tiny_config("2"), attention_type="magic")), "attention_type", "'magic'"),
    (lambda: ConnectorConfig.from_dict({"rope_type": "spiral"}), "rope_type", "'spiral'"),
    (lambda: VideoVAEConfig.from_dict({"norm_layer": "batch_norm"}), "norm_layer", "'batch_norm'"),
    (lambda: VideoVAEConfig.from_dict({"spatial_padding_mode": "mirror"}), "spatial_padding_mode", "'mirror'"),
    (lambda: VideoVAEConfig.from_dict({"dims": 2}), "dims", "2"),
    (lambda: AudioVAEConfig.from_dict({"model": {"params": {"ddconfig": {"norm_type": "batch"}}}}), "norm_type",
     "'batch'"),
    (lambda: AudioVAEConfig.from_dict({"model": {"params": {"ddconfig": {"causality_axis": "depth"}}}}),
     "causality_axis", "'depth'"),
    (lambda: UpsamplerConfig.from_dict({"dims": 1}), "dims", "1"),
    (lambda: Gemma3Config.from_dict({"num_attention_heads": 6, "num_key_value_heads": 4}), "num_key_value_heads", "4"),
    (lambda: GeneratorConfig.from_dict({"upsample_rates": [2, 2]}), "upsample_rates", r"\[2, 2\]"),
    (lambda: GeneratorConfig.from_dict({"resblock_dilation_sizes": [[1, 3]] * 3}), "resblock_dilation_sizes",
     r"\[1, 3\]"),
])
def test_bad_values_name_the_key_and_the_value(build, key, value):
    with pytest.raises(ValueError, match=f"{key}.*{value}|{value}.*{key}"):
        build()


def test_choices_list_what_is_allowed():
    with pytest.raises(ValueError, match=r"not one of \('interleaved', 'split'\)"):
        ConnectorConfig.from_dict({"rope_type": "spiral"})
    with pytest.raises(ValueError, match=r"not one of \(2, 3\)"):
        UpsamplerConfig.from_dict({"dims": 1})
    with pytest.raises(ValueError, match="lacks \\['n_fft', 'num_mels'\\]"):
        VocoderConfig.from_dict({"vocoder": {"resblock": "AMP1", "stereo": True, "activation": "snakebeta"},
                                 "bwe": {"resblock": "AMP1", "stereo": True, "activation": "snakebeta",
                                         "input_sampling_rate": 16000, "output_sampling_rate": 48000,
                                         "hop_length": 80}})
