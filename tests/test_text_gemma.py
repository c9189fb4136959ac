"""Gemma-3 text model vs transformers (every hidden state, left padding), loading, quantization, tokenizer, bad input."""

import json
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from safetensors.torch import save_file
from transformers import Gemma3Config as HFGemma3Config
from transformers import Gemma3ForConditionalGeneration, Gemma3TextConfig

from ltx_mlx.weights.checkpoint import CheckpointError, parameter_shapes
from ltx_mlx.convert import quantization_plans
from ltx_mlx.models.gemma3 import Gemma3Config, Gemma3TextModel, sanitize
from ltx_mlx.weights.checkpoint import read_gemma_config
from ltx_mlx.weights.tokenizer import PromptTokenizer
from reference import assert_parity, to_np
from text_fixtures import TINY_TEXT, hf_hidden_states, save_gemma_folder, tiny_gemma
from loading import load_gemma

PROMPTS = ["a cat walks on the beach at sunset", "  the camera pans over mountains at night in the rain  "]
MAX_LEN = 24  # > sliding window 4, so the window matters; both prompts are left-padded


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory):
    model = tiny_gemma("multimodal", seed=0)
    folder = save_gemma_folder(model, tmp_path_factory.mktemp("gemma"))
    return model, folder


def test_gemma_matches_transformers_every_hidden_state(gemma_folder):
    hf, folder = gemma_folder
    assert (folder / "model.safetensors.index.json").is_file()  # sharded, as Hugging Face ships it
    ours = load_gemma(folder)
    assert [l.self_attn.is_sliding for l in ours.layers] == [True] * 5 + [False, True]
    ids, mask = PromptTokenizer(folder, MAX_LEN)(PROMPTS)
    assert int(mask[0].sum()) < MAX_LEN and int(mask[1].sum()) < MAX_LEN and int(mask[0].sum()) != int(mask[1].sum())
    ref = hf_hidden_states(hf, np.array(ids), np.array(mask))
    got = ours(ids, mask)
    assert len(got) == len(ref) == TINY_TEXT["num_hidden_layers"] + 1
    errors = [assert_parity(g, r, 2e-6, f"hidden state {i}") for i, (g, r) in enumerate(zip(got, ref))]  # <= 7.4e-7
    print(f"Gemma parity (7 layers, B=2, T={MAX_LEN}, window 4): max rel err {max(errors):.2e} "
          f"per state {['%.1e' % e for e in errors]}")
    # the pads matter nowhere downstream, but are reproduced too (SDPA's zero output for fully masked rows)
    pad_rows = np.array(mask) == 0
    assert np.abs(to_np(got[3])[pad_rows] - to_np(ref[3])[pad_rows]).max() <= 1e-5 * np.abs(to_np(ref[3])).max()


def test_embedding_scale_is_rounded_to_the_weight_dtype():
    # HF casts sqrt(hidden) to the weight dtype: bf16 gives 62.0 for 3840, fp32 keeps float32(61.9677...)
    cfg = Gemma3Config.from_dict({**TINY_TEXT, "hidden_size": 3840, "num_hidden_layers": 1, "vocab_size": 4})
    model = Gemma3TextModel(cfg)
    model.embed_tokens.weight = mx.ones((4, 3840))
    ids = mx.array([[1]])
    assert float(model.embed(ids)[0, 0, 0]) == float(np.float32(3840 ** 0.5))
    model.set_dtype(mx.bfloat16)
    x = model.embed(ids)
    assert x.dtype == mx.bfloat16 and float(x[0, 0, 0]) == 62.0
    hf = torch.nn.Embedding(4, 3840, dtype=torch.bfloat16)
    torch.nn.init.ones_(hf.weight)
    with torch.no_grad():
        assert float(hf(torch.tensor([1]))[0, 0] * torch.tensor(3840 ** 0.5).to(torch.bfloat16)) == 62.0


def test_bfloat16_runs_in_bfloat16_like_transformers(tmp_path):
    # hidden 48: sqrt(48) = 6.928 is not a bf16 number, so state 0 shows the scale rounding
    hf = tiny_gemma("multimodal", seed=4, hidden_size=48)
    folder = save_gemma_folder(hf, tmp_path / "g48")
    ids, mask = PromptTokenizer(folder, MAX_LEN)(PROMPTS)
    ref32 = hf_hidden_states(hf, np.array(ids), np.array(mask))
    ref16 = hf_hidden_states(hf.to(torch.bfloat16), np.array(ids), np.array(mask))
    got = load_gemma(folder, dtype="bfloat16")(ids, mask)
    assert all(s.dtype == mx.bfloat16 for s in got)
    np.testing.assert_array_equal(to_np(got[0]), to_np(ref16[0]))
    valid = np.array(mask).astype(bool)
    worst = [0.0, 0.0]
    for g, r16, r32 in zip(got, ref16, ref32):
        ours, theirs = (float(np.abs(to_np(x)[valid] - to_np(r32)[valid]).max() / np.abs(to_np(r32)[valid]).max())
                        for x in (g, r16))
        assert ours <= 2 * theirs + 2e-3
        worst = [max(worst[0], ours), max(worst[1], theirs)]
    print(f"bf16 vs fp32 transformers, worst state: ours {worst[0]:.2e}, transformers' own bf16 {worst[1]:.2e}")


def test_key_layouts_and_text_only(gemma_folder, tmp_path):
    hf, folder = gemma_folder
    ref = dict(tree_flatten(load_gemma(folder).parameters()))
    # the newer layout (model.language_model.*, model.vision_tower.*, lm_head) in a single file
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(folder / "config.json", new / "config.json")
    shutil.copy(folder / "tokenizer.json", new / "tokenizer.json")
    renamed = {_to_new_layout(k): v for k, v in _legacy_state_dict(hf).items()}
    renamed["lm_head.weight"] = renamed["model.language_model.embed_tokens.weight"].clone()
    assert any(k.startswith("model.vision_tower.") for k in renamed)
    save_file(renamed, str(new / "model.safetensors"))
    for k, v in tree_flatten(load_gemma(new).parameters()):
        np.testing.assert_array_equal(np.array(v), np.array(ref[k]), err_msg=k)
    # text-only Gemma3ForCausalLM (model.* keys, model_type gemma3_text), one unsharded file. Its config sets a
    # (small, so it would show) attention softcap: transformers' Gemma3Attention stores it but never applies it.
    text_only = tiny_gemma("text", seed=3, attn_logit_softcapping=0.5)
    ours = load_gemma(save_gemma_folder(text_only, tmp_path / "text", shard=False))
    ids = mx.array([[0, 0, 2, 5, 9, 11, 7, 30, 8, 6]])
    mask = (ids != 0).astype(mx.int32)
    ref_states = hf_hidden_states(text_only, np.array(ids), np.array(mask))
    err = max(assert_parity(g, r, 2.5e-6) for g, r in zip(ours(ids, mask), ref_states))  # measured 9.0e-7
    print(f"text-only Gemma3ForCausalLM parity (attn_logit_softcapping 0.5 in its config): {err:.2e}")


def _legacy_state_dict(hf):
    """transformers' on-disk layout for Gemma3ForConditionalGeneration (what save_pretrained writes)."""
    out = {}
    for k, v in hf.state_dict().items():
        if k == "lm_head.weight":
            continue
        k = k.replace("model.language_model.", "language_model.model.").replace("model.vision_tower.", "vision_tower.")
        out[k.replace("model.multi_modal_projector.", "multi_modal_projector.")] = v.contiguous().clone()
    return out


def _to_new_layout(k):
    for old, new in (("language_model.model.", "model.language_model."), ("vision_tower.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector.")):
        if k.startswith(old):
            return new + k[len(old):]
    return k


def test_sliding_window_pattern_when_config_has_no_layer_types(gemma_folder, tmp_path):
    _, folder = gemma_folder
    d = json.loads((folder / "config.json").read_text())
    del d["text_config"]["layer_types"]
    d["text_config"]["sliding_window_pattern"] = 3
    (tmp_path / "config.json").write_text(json.dumps(d))
    cfg = read_gemma_config(tmp_path)
    hf_cfg = Gemma3TextConfig(**d["text_config"])
    assert cfg.layer_types == hf_cfg.layer_types == ["sliding_attention", "sliding_attention", "full_attention"] * 2 + [
        "sliding_attention"]


# The text_config of google/gemma-3-12b-it(-qat-q4_0-unquantized)/config.json: everything else is a default.
GEMMA_12B_TEXT = {"hidden_size": 3840, "intermediate_size": 15360, "model_type": "gemma3_text",
                  "num_attention_heads": 16, "num_hidden_layers": 48, "num_key_value_heads": 8,
                  "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}


def test_gemma_12b_config_and_key_set_consumed_exactly():
    ours_cfg = Gemma3Config.from_dict(GEMMA_12B_TEXT)
    hf_text = Gemma3TextConfig(**GEMMA_12B_TEXT)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "query_pre_attn_scalar", "rope_theta", "rope_local_base_freq",
                 "rms_norm_eps", "sliding_window", "layer_types", "attention_bias", "hidden_activation"):
        assert getattr(ours_cfg, name) == getattr(hf_text, name), name
    assert (ours_cfg.vocab_size, ours_cfg.head_dim, ours_cfg.num_hidden_states) == (262208, 256, 49)
    with torch.device("meta"):
        hf = Gemma3ForConditionalGeneration(HFGemma3Config(text_config=GEMMA_12B_TEXT))
    ref = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    ours = parameter_shapes(Gemma3TextModel(ours_cfg))
    for layout in (lambda k: k, _legacy_layout_key):  # transformers' in-memory and on-disk layouts
        shapes = sanitize({layout(k): _Shape(s) for k, s in ref.items()})
        assert {k: v.shape for k, v in shapes.items()} == ours
    assert len(ours) == 48 * 13 + 2


class _Shape:
    def __init__(self, shape):
        self.shape = shape


def _legacy_layout_key(k):
    if k == "lm_head.weight":
        return "language_model.lm_head.weight"
    for new, old in (("model.language_model.", "language_model.model."), ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector.")):
        if k.startswith(new):
            return old + k[len(new):]
    return k


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_gemma_loads_and_runs(gemma_folder, bits):
    _, folder = gemma_folder
    fp32 = load_gemma(folder)
    ids, mask = PromptTokenizer(folder, MAX_LEN)(PROMPTS)
    ref = fp32(ids, mask)
    q = load_gemma(folder, quantize=quantization_plans(bits, 32, components=("gemma",)))
    linears = [p for p, m in q.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
    assert len(linears) == 7 * 7 and all(isinstance(m, nn.QuantizedLinear) and m.bits == bits
                                         for p, m in q.named_modules() if p in linears)
    assert type(q.embed_tokens) is nn.Embedding  # only the decoder layers' linears are quantized
    got = q(ids, mask)
    valid = np.array(mask).astype(bool)
    errs = [float(np.abs(to_np(g)[valid] - to_np(r)[valid]).max() / np.abs(to_np(r)[valid]).max())
            for g, r in zip(got, ref)]
    rms = [float(np.linalg.norm(to_np(g)[valid] - to_np(r)[valid]) / np.linalg.norm(to_np(r)[valid]))
           for g, r in zip(got, ref)]
    print(f"{bits}-bit Gemma (group 32, random weights) vs fp32 over valid tokens: max|d|/max|ref| worst state "
          f"{max(errs):.3e}, last {errs[-1]:.3e}; relative RMS per state {['%.3f' % r for r in rms]}")
    assert max(errs) < (0.5 if bits == 4 else 0.05) and max(errs) > 0


def test_tokenizer_left_pads_strips_and_adds_bos(gemma_folder):
    _, folder = gemma_folder
    tok = PromptTokenizer(folder, 12)
    ids, mask = tok(["  a cat  "])
    assert ids.shape == (1, 12) and ids.dtype == mx.int32
    assert np.array(ids)[0].tolist() == [0] * 9 + [2, 4, 5] and np.array(mask)[0].tolist() == [0] * 9 + [1] * 3
    ids, mask = tok("")  # the empty negative prompt the reference allows: BOS alone
    assert np.array(ids)[0, -1] == 2 and int(mask.sum()) == 1


def test_overlong_prompt_is_truncated_with_a_warning(gemma_folder):
    _, folder = gemma_folder
    tok = PromptTokenizer(folder, 12)
    with pytest.warns(UserWarning, match="only the first 12"):
        ids, mask = tok("cat " * 30)
    assert np.array(ids)[0].tolist() == [2] + [5] * 11 and int(mask.sum()) == 12


def test_bad_gemma_folders(gemma_folder, tmp_path):
    _, folder = gemma_folder
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        load_gemma(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_gemma(tmp_path)
    wrong = tmp_path / "llama"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="'llama' model, not Gemma-3"):
        load_gemma(wrong)
    empty = tmp_path / "noweights"
    empty.mkdir()
    shutil.copy(folder / "config.json", empty / "config.json")
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_gemma(empty)
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial)
    next(partial.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="shards listed .* missing"):
        load_gemma(partial)
    # weights of a bigger Gemma under a smaller config: strict load names the misshaped keys
    mismatch = tmp_path / "mismatch"
    shutil.copytree(folder, mismatch)
    d = json.loads((mismatch / "config.json").read_text())
    d["text_config"]["num_hidden_layers"] = 6
    d["text_config"]["layer_types"] = d["text_config"]["layer_types"][:6]
    (mismatch / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="unexpected: layers.6"):
        load_gemma(mismatch)


def test_missing_or_wrong_tokenizer(gemma_folder, tmp_path):
    _, folder = gemma_folder
    with pytest.raises(CheckpointError, match="no Gemma tokenizer"):
        PromptTokenizer(tmp_path)
    big = tmp_path / "big"
    big.mkdir()
    from tokenizers import Tokenizer, models
    Tokenizer(models.WordLevel({f"t{i}": i for i in range(400)}, unk_token="t0")).save(str(big / "tokenizer.json"))
    (big / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "bos_token": "t2", "eos_token": "t1"}))
    gemma_cfg = read_gemma_config(folder)
    with pytest.raises(CheckpointError, match="400 tokens but the Gemma model only 300: it belongs to another"):
        PromptTokenizer(big, gemma_config=gemma_cfg)
    (big / "tokenizer.json").unlink()
    Tokenizer(models.WordLevel({f"t{i}": i for i in range(200)}, unk_token="t0")).save(str(big / "tokenizer.json"))
    (big / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "bos_token": "t7", "eos_token": "t1"}))
    with pytest.raises(CheckpointError, match="BOS id 7, Gemma's config 2: it belongs to another model"):
        PromptTokenizer(big, gemma_config=gemma_cfg)
    assert PromptTokenizer(folder, gemma_config=gemma_cfg).max_length == 1024
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="could not load the Gemma tokenizer"):
        PromptTokenizer(broken)
