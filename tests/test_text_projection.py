"""Feature extractors V1/V2 and the embeddings connectors vs ltx-core, via official-format files; batch > 1; full size."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from ltx_core.text_encoders.gemma.embeddings_connector import (AudioEmbeddings1DConnectorConfigurator,
                                                              Embeddings1DConnectorConfigurator)
from ltx_core.text_encoders.gemma.embeddings_processor import EmbeddingsProcessor, convert_to_additive_mask
from ltx_core.text_encoders.gemma.encoders.encoder_configurator import (EMBEDDINGS_PROCESSOR_KEY_OPS,
                                                                        EmbeddingsProcessorConfigurator)
from ltx_core.text_encoders.gemma.feature_extractor import FeatureExtractorV1, FeatureExtractorV2

from ltx_mlx.weights.checkpoint import CheckpointError, parameter_shapes
from ltx_mlx.models.text_projection import PREFIXES, TextProjection, TextProjectionConfig, route_key
from reference import assert_parity, randomize_, rel_err, save_official_checkpoint, to_mx
from loading import load_official
from text_fixtures import save_gemma_folder, tiny_gemma

D, L, T = 16, 5, 128  # fake Gemma: hidden 16, 4 layers + embeddings; T a multiple of the 128 registers
VALID = (37, 90)  # valid (left-padded) tokens of the two samples

V2_KEYS = {"caption_proj_before_connector": True, "caption_projection_first_linear": False,
           "caption_proj_input_norm": False, "caption_projection_second_linear": False}


def tiny_transformer_config(version: int, rope_type="split", precision="float64") -> dict:
    t = {"rope_type": rope_type, "caption_channels": D, "connector_num_learnable_registers": 128,
         "connector_positional_embedding_max_pos": [4096], "num_attention_heads": 2, "attention_head_dim": 12,
         "audio_num_attention_heads": 2, "audio_attention_head_dim": 6}
    if precision:
        t["frequencies_precision"] = precision
    if version == 1:  # LTX-2: both connectors Gemma-wide (audio falls back to connector_*)
        t.update(connector_num_attention_heads=2, connector_attention_head_dim=D // 2, connector_num_layers=2)
    else:  # LTX-2.3: gated connectors as wide as the transformer's video / audio streams
        t.update(V2_KEYS, connector_num_attention_heads=2, connector_attention_head_dim=12, connector_num_layers=2,
                 audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=6,
                 connector_apply_gated_attention=True)
    return t


def reference_processor(t: dict, seed: int = 0) -> EmbeddingsProcessor:
    cfg = {"transformer": t}
    video = Embeddings1DConnectorConfigurator.from_config(cfg)
    audio = AudioEmbeddings1DConnectorConfigurator.from_config(cfg)
    if "caption_proj_before_connector" in t:
        fe = FeatureExtractorV2(torch.nn.Linear(D * L, 24), D, torch.nn.Linear(D * L, 12))
    else:
        fe = FeatureExtractorV1(torch.nn.Linear(D * L, D, bias=False), is_av=True)
    proc = EmbeddingsProcessor(feature_extractor=fe, video_connector=video, audio_connector=audio)
    return randomize_(proc, seed, std=0.1).eval()


def official_tensors(proc: EmbeddingsProcessor) -> dict:
    """The reference's state dict under the official checkpoint keys (checked against its own key ops)."""
    out = {}
    for k, v in proc.state_dict().items():
        head, rest = k.split(".", 1)
        official = PREFIXES[head + "."] + rest
        assert EMBEDDINGS_PROCESSOR_KEY_OPS.apply_to_key(official) == k
        out[official] = v
    return out


def hidden_states(B: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    hs = tuple(torch.randn(B, T, D, generator=g) * (1 + i) + 0.3 * i for i in range(L))
    mask = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        mask[b, T - VALID[b]:] = 1
    return hs, mask


def save_and_load(tmp_path, proc, t, version, gemma=None):
    path = save_official_checkpoint(tmp_path / f"ltx{version}.safetensors", official_tensors(proc), {"transformer": t},
                                    "2.3.0" if version == 2 else "2.0.0")
    return load_official(path, "text_projection", gemma=gemma)


CASES = [(1, "split", "float64"), (2, "split", "float64"), (1, "interleaved", "float64"), (2, "interleaved", None)]


@pytest.mark.parametrize("version,rope_type,precision", CASES)
def test_projection_matches_reference(tmp_path, version, rope_type, precision):
    t = tiny_transformer_config(version, rope_type, precision)
    proc = reference_processor(t, seed=version)
    ours = save_and_load(tmp_path, proc, t, version)
    assert ours.config.version == version and (ours.config.embedding_dim, ours.config.num_states) == (D, L)
    hs, mask = hidden_states(1)
    states, m = [to_mx(h) for h in hs], to_mx(mask).astype(mx.int32)
    with torch.no_grad():
        ref_v, ref_a = proc.feature_extractor(hs, mask, "left")
        additive = convert_to_additive_mask(mask, ref_v.dtype)
        ref_cv, _ = proc.video_connector(ref_v, additive)
        ref_ca, _ = proc.audio_connector(ref_a, additive)
        ref = proc.process_hidden_states(hs, mask)
    got_v, got_a = ours.feature_extractor(states, m)
    tol = 1.2e-6  # measured <= 4.3e-7
    errs = {"features video": assert_parity(got_v, ref_v, tol), "features audio": assert_parity(got_a, ref_a, tol),
            "video connector": assert_parity(ours.video_connector(to_mx(ref_v), m), ref_cv, tol),
            "audio connector": assert_parity(ours.audio_connector(to_mx(ref_a), m), ref_ca, tol)}
    video, audio, ctx_mask = ours(states, m)
    errs["processor video"] = assert_parity(video, ref.video_encoding, tol)
    errs["processor audio"] = assert_parity(audio, ref.audio_encoding, tol)
    np.testing.assert_array_equal(np.array(ctx_mask), ref.attention_mask.numpy())
    print(f"V{version} {rope_type}/{precision}: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))


@pytest.mark.parametrize("registers", [64, None])
def test_register_count_comes_from_the_tensor_not_the_config(tmp_path, registers):
    """The reference builds 128 learnable registers whatever `connector_num_learnable_registers` says (or
    without it); the stored tensor, not the key, fixes the number, and the result matches the reference."""
    t = tiny_transformer_config(2)
    if registers is None:
        del t["connector_num_learnable_registers"]
    else:
        t["connector_num_learnable_registers"] = registers
    proc = reference_processor(t, seed=9)
    assert proc.video_connector.learnable_registers.shape[0] == 128
    ours = save_and_load(tmp_path, proc, t, 2)
    assert ours.video_connector.learnable_registers.shape[0] == ours.audio_connector.learnable_registers.shape[0] == 128
    hs, mask = hidden_states(1)
    with torch.no_grad():
        ref = proc.process_hidden_states(hs, mask)
    video, audio, _ = ours([to_mx(h) for h in hs], to_mx(mask).astype(mx.int32))
    assert_parity(video, ref.video_encoding, what="video context")
    assert_parity(audio, ref.audio_encoding, what="audio context")


@pytest.mark.parametrize("version", [1, 2])
def test_batch_of_two_equals_two_batches_of_one(tmp_path, version):
    t = tiny_transformer_config(version)
    ours = save_and_load(tmp_path, reference_processor(t, seed=5), t, version)
    hs, mask = hidden_states(2)
    states, m = [to_mx(h) for h in hs], to_mx(mask).astype(mx.int32)
    video, audio, _ = ours(states, m)
    for b in range(2):
        v1, a1, _ = ours([s[b:b + 1] for s in states], m[b:b + 1])
        assert rel_err(video[b:b + 1], v1) <= 1e-6 and rel_err(audio[b:b + 1], a1) <= 1e-6
    # and each sample is what the reference (B=1 only) gives
    proc = reference_processor(t, seed=5)
    for b in range(2):
        with torch.no_grad():
            ref = proc.process_hidden_states(tuple(h[b:b + 1] for h in hs), mask[b:b + 1])
        assert_parity(video[b:b + 1], ref.video_encoding, 1e-6)  # measured <= 3.7e-7
        assert_parity(audio[b:b + 1], ref.audio_encoding, 1e-6)


def test_registers_fill_the_padding(tmp_path):
    t = tiny_transformer_config(2)
    ours = save_and_load(tmp_path, reference_processor(t), t, 2)
    con = ours.video_connector
    x = mx.random.normal((2, T, 24))
    mask = mx.array(np.stack([np.arange(T) >= T - n for n in VALID]).astype(np.int32))
    out = np.array(con.replace_padding_with_registers(x, mask))
    regs = np.array(con.learnable_registers)
    for b, n in enumerate(VALID):
        np.testing.assert_array_equal(out[b, :n], np.array(x)[b, T - n:])
        np.testing.assert_array_equal(out[b, n:], regs[np.arange(n, T) % 128])


def test_gemma_dims_come_from_the_gemma_config(tmp_path):
    t = tiny_transformer_config(1)
    del t["caption_channels"]
    proc = reference_processor(t)
    dims = dict(hidden_size=D, num_attention_heads=2, num_key_value_heads=1, head_dim=8, intermediate_size=32)
    gemma = save_gemma_folder(tiny_gemma("text", **dims, num_hidden_layers=L - 1), tmp_path / "gemma")
    ours = save_and_load(tmp_path, proc, t, 1, gemma=gemma)
    assert (ours.config.embedding_dim, ours.config.num_states) == (D, L)
    other = save_gemma_folder(tiny_gemma("text", **dims, num_hidden_layers=7), tmp_path / "gemma-8")
    with pytest.raises(CheckpointError, match="this Gemma gives 16 x 8 = 128; use the Gemma-3 model"):
        save_and_load(tmp_path, proc, t, 1, gemma=other)
    with pytest.raises(CheckpointError, match="pass --gemma-root"):
        save_and_load(tmp_path, proc, t, 1)


def test_version_selection_and_bad_files(tmp_path):
    partial = {**tiny_transformer_config(1), "caption_proj_before_connector": True}
    with pytest.raises(ValueError, match="partial V2 .* caption_proj_input_norm"):
        TextProjectionConfig.from_dict(partial, D, L)
    odd = {**tiny_transformer_config(2), "caption_proj_input_norm": True}
    with pytest.raises(ValueError, match="caption_proj_input_norm=True"):
        TextProjectionConfig.from_dict(odd, D, L)
    t = tiny_transformer_config(2)
    tensors = official_tensors(reference_processor(t))
    path = save_official_checkpoint(tmp_path / "nometa.safetensors", tensors)
    with pytest.raises(CheckpointError, match="no metadata"):
        load_official(path, "text_projection")
    missing = {k: v for k, v in tensors.items() if "blocks.1.ff" not in k}
    path = save_official_checkpoint(tmp_path / "missing.safetensors", missing, {"transformer": t}, "2.3.0")
    with pytest.raises(CheckpointError, match="missing: audio_connector.transformer_1d_blocks.1.ff"):
        load_official(path, "text_projection")
    ours = save_and_load(tmp_path, reference_processor(t), t, 2)
    with pytest.raises(ValueError, match="multiple of the connector's 128 registers"):
        ours.video_connector(mx.zeros((1, 100, 24)), mx.ones((1, 100)))


# Real LTX-2 / LTX-2.3 transformer metadata (text-side keys; the spec's section 1.3 and examples/t_fullsize.py)
_BASE = {"rope_type": "split", "frequencies_precision": "float64", "caption_channels": 3840,
         "connector_attention_head_dim": 128, "connector_num_learnable_registers": 128,
         "connector_positional_embedding_max_pos": [4096], "num_attention_heads": 32, "attention_head_dim": 128,
         "audio_num_attention_heads": 32, "audio_attention_head_dim": 64}
LTX2 = dict(_BASE, connector_num_attention_heads=30, connector_num_layers=2)
LTX23 = dict(_BASE, **V2_KEYS, connector_num_attention_heads=32, connector_num_layers=8,
             audio_connector_num_attention_heads=32, audio_connector_attention_head_dim=64,
             connector_apply_gated_attention=True)


class _Shape:
    def __init__(self, shape):
        self.shape = tuple(shape)


@pytest.mark.parametrize("name,t", [("LTX-2", LTX2), ("LTX-2.3", LTX23)])
def test_full_size_keys_and_shapes(name, t):
    with torch.device("meta"):
        ref = EmbeddingsProcessorConfigurator.from_config({"transformer": t})
    official = {}
    for k, v in ref.state_dict().items():
        head, rest = k.split(".", 1)
        official[PREFIXES[head + "."] + rest] = _Shape(v.shape)
        assert EMBEDDINGS_PROCESSOR_KEY_OPS.apply_to_key(PREFIXES[head + "."] + rest) == k
    ours_from_file = {route_key(k): v for k, v in official.items()}  # the names need no change
    cfg = TextProjectionConfig.from_dict(t, 3840, 48 + 1)  # Gemma-3-12B: hidden 3840, 48 layers + embeddings
    shapes = parameter_shapes(TextProjection(cfg))
    assert {k: v.shape for k, v in ours_from_file.items()} == shapes
    n = sum(int(np.prod(s)) for s in shapes.values())
    print(f"{name}: {len(shapes)} text-projection tensors, {n / 1e9:.2f} B parameters")
    assert route_key("model.diffusion_model.caption_projection.linear_1.weight") is None
