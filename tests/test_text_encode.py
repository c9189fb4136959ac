"""Prompts -> video/audio contexts, end to end, vs the reference's GemmaTextEncoder + EmbeddingsProcessor."""

import numpy as np
import pytest
import torch
from ltx_core.text_encoders.gemma.embeddings_connector import (AudioEmbeddings1DConnectorConfigurator,
                                                              Embeddings1DConnectorConfigurator)
from ltx_core.text_encoders.gemma.embeddings_processor import EmbeddingsProcessor
from ltx_core.text_encoders.gemma.encoders.base_encoder import GemmaTextEncoder
from ltx_core.text_encoders.gemma.feature_extractor import FeatureExtractorV1, FeatureExtractorV2
from ltx_core.text_encoders.gemma.tokenizer import LTXVGemmaTokenizer

import ltx_mlx
from loading import convert_official
from ltx_mlx.models.text_projection import TextProjection
from ltx_mlx.text_encoder import TextEncoder, encode_prompts
from reference import assert_parity, randomize_, rel_err, save_official_checkpoint
from text_fixtures import TINY_TEXT, save_gemma_folder, tiny_gemma

HIDDEN, STATES, MAX_LEN = TINY_TEXT["hidden_size"], TINY_TEXT["num_hidden_layers"] + 1, 128
V2_KEYS = {"caption_proj_before_connector": True, "caption_projection_first_linear": False,
           "caption_proj_input_norm": False, "caption_projection_second_linear": False}
PROMPT = "a red car drives slowly through the city at night in the rain"


def ltx_config(version: int) -> dict:
    t = {"rope_type": "split", "frequencies_precision": "float64", "caption_channels": HIDDEN,
         "connector_positional_embedding_max_pos": [4096], "connector_num_learnable_registers": 128,
         "num_attention_heads": 2, "attention_head_dim": 16, "audio_num_attention_heads": 2, "audio_attention_head_dim": 8}
    if version == 1:
        t.update(connector_num_attention_heads=4, connector_attention_head_dim=16, connector_num_layers=2)
    else:
        t.update(V2_KEYS, connector_num_attention_heads=2, connector_attention_head_dim=16, connector_num_layers=2,
                 audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=8,
                 connector_apply_gated_attention=True)
    return {"transformer": t}


def reference_processor(cfg: dict, version: int) -> EmbeddingsProcessor:
    flat = HIDDEN * STATES
    if version == 1:
        fe = FeatureExtractorV1(torch.nn.Linear(flat, HIDDEN, bias=False), is_av=True)
    else:
        fe = FeatureExtractorV2(torch.nn.Linear(flat, 32), HIDDEN, torch.nn.Linear(flat, 16))
    proc = EmbeddingsProcessor(feature_extractor=fe, video_connector=Embeddings1DConnectorConfigurator.from_config(cfg),
                               audio_connector=AudioEmbeddings1DConnectorConfigurator.from_config(cfg))
    return randomize_(proc, 7, std=0.1).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode")
    hf = tiny_gemma("multimodal", seed=11)
    folder = save_gemma_folder(hf, root / "gemma")
    out = {"hf": hf, "folder": folder}
    for version in (1, 2):
        cfg = ltx_config(version)
        proc = reference_processor(cfg, version)
        tensors = {}
        for k, v in proc.state_dict().items():
            head, rest = k.split(".", 1)
            prefix = {"feature_extractor": "text_embedding_projection.",
                      "video_connector": "model.diffusion_model.video_embeddings_connector.",
                      "audio_connector": "model.diffusion_model.audio_embeddings_connector."}[head]
            tensors[prefix + rest] = v
        path = save_official_checkpoint(root / f"ltx{version}.safetensors", tensors, cfg, ("2.0.0", "2.3.0")[version - 1])
        out[version] = (proc, path)
    return out


def text_encoder(setup, version, max_length=MAX_LEN) -> TextEncoder:
    """Gemma folder + official checkpoint -> converted folder -> the bundle's text encoder, as generation builds it."""
    return ltx_mlx.load(convert_official(setup[version][1], gemma=setup["folder"])).text_encoder(max_length)


def reference_contexts(setup, version, prompt):
    enc = GemmaTextEncoder(model=setup["hf"], tokenizer=LTXVGemmaTokenizer(str(setup["folder"]), MAX_LEN))
    with torch.no_grad():
        states, mask = enc.encode(prompt)
        return setup[version][0].process_hidden_states(states, mask)


@pytest.mark.parametrize("version", [1, 2])
def test_prompts_to_contexts_match_reference(setup, version):
    encoder = text_encoder(setup, version)
    assert not isinstance(encoder._projection, TextProjection)  # read only once Gemma is done
    pos, neg = encode_prompts(PROMPT, "", encoder=encoder, free_gemma=True)
    assert encoder.gemma is None and isinstance(encoder._projection, TextProjection)
    errs = []
    for ours, prompt in ((pos, PROMPT), (neg, "")):
        ref = reference_contexts(setup, version, prompt)
        errs.append(assert_parity(ours.video, ref.video_encoding, 2.5e-6, "video context"))  # measured <= 9.8e-7
        errs.append(assert_parity(ours.audio, ref.audio_encoding, 2.5e-6, "audio context"))
        np.testing.assert_array_equal(np.array(ours.mask), ref.attention_mask.numpy())
    assert pos.video.shape == (1, MAX_LEN, HIDDEN if version == 1 else 32)
    assert pos.audio.shape == (1, MAX_LEN, HIDDEN if version == 1 else 16)
    print(f"end-to-end V{version} (tokenizer -> Gemma -> projection, T={MAX_LEN}): max rel err {max(errs):.2e}")
    with pytest.raises(RuntimeError, match="Gemma was freed"):
        encoder.encode(["a cat"])


def test_prompt_errors(setup):
    encoder = text_encoder(setup, 2)
    for bad in ("", "   \n"):
        with pytest.raises(ValueError, match="the prompt is empty"):
            encode_prompts(bad, "blurry", encoder=encoder)
    with pytest.raises(ValueError, match="multiple of the connector's 128 registers"):
        text_encoder(setup, 2, max_length=100)
    pos, neg = encode_prompts("a cat", None, encoder=encoder, free_gemma=False)
    assert neg is None and encoder.gemma is not None
    with pytest.raises(ValueError, match="negative_prompt must be a string"):
        encode_prompts("a cat", 3, encoder=encoder)
    # a second encoder from the same folder gives the same contexts
    pos2, _ = encode_prompts("a cat", "", encoder=text_encoder(setup, 2))
    assert rel_err(pos2.video, pos.video) == 0.0 and rel_err(pos2.audio, pos.audio) == 0.0
