"""Audio VAE and vocoder helpers: tiny configs and randomised reference models saved as official-format files."""

import numpy as np
import torch
from ltx_core.model.audio_vae import AudioDecoderConfigurator, AudioEncoderConfigurator
from ltx_core.model.audio_vae import VocoderConfigurator, VocoderWithBWE as RefVocoderWithBWE
from mel_reference import slaney_mel_filterbank
from reference import randomize_, save_official_checkpoint


def audio_cfg(ch=32, z=2, **dd):
    """A tiny `audio_vae` section shaped like the released files (ch must equal z · mel_bins / 4)."""
    ddconfig = {"ch": ch, "out_ch": 2, "in_channels": 2, "ch_mult": [1, 2, 4], "num_res_blocks": 1,
                "attn_resolutions": [], "resolution": 256, "z_channels": z, "double_z": True,
                "norm_type": "pixel", "causality_axis": "height", "dropout": 0.0,
                "mid_block_add_attention": False, "mel_bins": 64}
    ddconfig.update(dd)
    return {"audio_vae": {"model": {"params": {"sampling_rate": 16000, "ddconfig": ddconfig}},
                          "preprocessing": {"stft": {"hop_length": 160, "filter_length": 1024, "causal": True},
                                            "mel": {"n_mel_channels": 64}}}}


AUDIO_VAE_CONFIGS = {
    "released": audio_cfg(),
    # mid-block attention plus attention at the 128 "resolution" (encoder level 1, decoder level 1)
    "attention": audio_cfg(mid_block_add_attention=True, attn_resolutions=[128]),
    # attn_type "none": the reference encoder drops its attention blocks, its decoder keeps vanilla ones
    "attention_type_none": audio_cfg(mid_block_add_attention=True, attn_resolutions=[128], attn_type="none"),
    "two_blocks_non_causal_groupnorm": audio_cfg(num_res_blocks=2, causality_axis=None, norm_type="group"),
    "width_causal": audio_cfg(causality_axis="width"),
}


def write_audio_vae(path, config, seed=0):
    enc = randomize_(AudioEncoderConfigurator.from_config(config), seed, std=0.05).eval()
    dec = randomize_(AudioDecoderConfigurator.from_config(config), seed + 1, std=0.05).eval()
    dec.per_channel_statistics.load_state_dict(enc.per_channel_statistics.state_dict())
    tensors = {}
    for name, module in (("encoder", enc), ("decoder", dec)):
        for k, v in module.state_dict().items():
            if k.startswith("per_channel_statistics."):
                tensors["audio_vae." + k] = v
            else:
                tensors[f"audio_vae.{name}.{k}"] = v
    tensors["vae.decoder.conv_in.conv.weight"] = torch.zeros(3)  # other components share the file
    save_official_checkpoint(path, tensors, config, "2.0.0")
    return enc, dec


V1 = {"vocoder": {"resblock": "1", "stereo": True, "upsample_initial_channel": 32, "upsample_rates": [6, 5, 2, 2, 2],
                  "upsample_kernel_sizes": [16, 15, 8, 4, 4], "resblock_kernel_sizes": [3, 7, 11],
                  "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "output_sampling_rate": 24000}}
AMP = {"resblock": "AMP1", "stereo": True, "activation": "snakebeta", "use_tanh_at_final": False,
       "use_bias_at_final": False, "resblock_kernel_sizes": [3, 7, 11],
       "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]]}
BWE = {"resblock": "AMP1", "stereo": True, "activation": "snakebeta", "use_tanh_at_final": False,
       "use_bias_at_final": False, "resblock_kernel_sizes": [3, 7, 11],
       "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "upsample_initial_channel": 32,
       "upsample_rates": [6, 5, 2, 2, 2], "upsample_kernel_sizes": [12, 11, 4, 4, 4], "apply_final_activation": False,
       "input_sampling_rate": 16000, "output_sampling_rate": 48000, "hop_length": 80, "n_fft": 512,
       "win_size": 512, "num_mels": 64}
V2 = {"vocoder": {"vocoder": {**AMP, "upsample_initial_channel": 64, "upsample_rates": [5, 2, 2, 2, 2, 2],
                              "upsample_kernel_sizes": [11, 4, 4, 4, 4, 4]}, "bwe": BWE}}


def stft_bases(n_fft: int) -> torch.Tensor:
    """Causal-STFT bases as the released files store them: real rows, then imaginary rows, × periodic Hann."""
    k = np.arange(n_fft // 2 + 1)[:, None]
    n = np.arange(n_fft)[None, :]
    win = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    bases = np.concatenate([np.cos(2 * np.pi * k * n / n_fft) * win, -np.sin(2 * np.pi * k * n / n_fft) * win])
    return torch.tensor(bases[:, None, :], dtype=torch.float32)


def reference_vocoder(config, seed=0):
    voc = randomize_(VocoderConfigurator.from_config(config), seed, std=0.05).eval()
    if isinstance(voc, RefVocoderWithBWE):
        b = config["vocoder"]["bwe"]
        voc.mel_stft.stft_fn.forward_basis.copy_(stft_bases(b["n_fft"]))
        voc.mel_stft.stft_fn.inverse_basis.copy_(torch.randn(voc.mel_stft.stft_fn.inverse_basis.shape))
        fb = slaney_mel_filterbank(b["n_fft"] // 2 + 1, b["input_sampling_rate"], 8000.0, b["num_mels"])
        voc.mel_stft.mel_basis.copy_(torch.tensor(fb, dtype=torch.float32))
    return voc
