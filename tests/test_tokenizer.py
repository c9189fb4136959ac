"""PromptTokenizer (the `tokenizers` library alone) gives the reference tokenizer's ids and mask exactly: the
reference's LTXVGemmaTokenizer (transformers' AutoTokenizer) on Gemma-like folders and their config variants, on the
tiny fixtures' tokenizer, and on empty, over-long, unicode and special-token prompts, one at a time or batched."""

import json
import warnings

import numpy as np
import pytest

from ltx_core.text_encoders.gemma.tokenizer import LTXVGemmaTokenizer
from ltx_mlx.weights.tokenizer import PromptTokenizer
from ltx_mlx.weights.checkpoint import CheckpointError
from text_fixtures import write_tokenizer
from tokenizer_fixtures import CORPUS, VARIANTS, copy_without_tokenizer_json, write_gemma_tokenizer

PROMPTS = ["a cat walks on the beach", "", "   ", "  the camera pans  ", " ".join(CORPUS * 2),
           "<bos> a <pad> dog <eos> <start_of_turn>x<image_soft_token>", "ünïcødé 猫 🐱 ñ Ａｆ ﬁ \u200b",
           "a\nb\tc  d", "cat " * 1500]


def reference_ids(ref: LTXVGemmaTokenizer, prompt: str) -> tuple[list, list]:
    pairs = ref.tokenize_with_weights(prompt)["gemma"]
    return [int(t) for t, _ in pairs], [int(m) for _, m in pairs]


def assert_same_as_reference(folder, max_length):
    ref = LTXVGemmaTokenizer(str(folder), max_length)
    ours = PromptTokenizer(folder, max_length)
    assert (len(ours), ours.bos_token_id, ours.pad_token_id) == \
        (len(ref.tokenizer), ref.tokenizer.bos_token_id, ref.tokenizer.pad_token_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the over-long prompts' truncation warning
        ids, mask = ours(PROMPTS)
        single = [ours(p) for p in PROMPTS]
    assert ids.shape == mask.shape == (len(PROMPTS), max_length)
    lengths = []
    for k, prompt in enumerate(PROMPTS):
        ref_ids, ref_mask = reference_ids(ref, prompt)
        assert np.array(ids)[k].tolist() == ref_ids and np.array(mask)[k].tolist() == ref_mask, prompt[:40]
        assert np.array(single[k][0])[0].tolist() == ref_ids and np.array(single[k][1])[0].tolist() == ref_mask
        lengths.append(sum(ref_mask))
    return lengths


@pytest.mark.parametrize("max_length", [1024, 12])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gemma_like_folders_match_the_reference(tmp_path, variant, max_length):
    lengths = assert_same_as_reference(write_gemma_tokenizer(tmp_path / variant, variant), max_length)
    assert lengths[1] == lengths[2] == (1 + (variant == "eos") if variant != "plain" else 1)  # BOS (+ EOS) alone
    assert lengths[4] == lengths[-1] == max_length  # > 1024 tokens: truncated
    assert len(set(lengths)) > 3


@pytest.mark.parametrize("max_length", [1024, 12])
def test_fixture_tokenizer_matches_the_reference(tmp_path, max_length):
    write_tokenizer(tmp_path)  # word-level, BOS from tokenizer_config.json, special tokens not yet "added"
    assert_same_as_reference(tmp_path, max_length)


def test_overlong_prompt_warns_with_its_length(tmp_path):
    folder = write_gemma_tokenizer(tmp_path / "g")
    tok = PromptTokenizer(folder, 1024)
    n = len(LTXVGemmaTokenizer(str(folder), 1024).tokenizer(("cat " * 1500).strip(), verbose=False)["input_ids"])
    assert n > 1500
    with pytest.warns(UserWarning, match=rf"prompt is {n} tokens long; only the first 1024 are used"):
        ids, mask = tok("cat " * 1500)
    assert int(mask.sum()) == 1024 and np.array(ids)[0, 0] == tok.bos_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok("a cat")  # no warning below the limit, and truncation does not stick
    assert int(tok("a cat")[1].sum()) < 10


def test_sentencepiece_only_folder_is_refused_with_the_fix(tmp_path):
    folder = copy_without_tokenizer_json(write_gemma_tokenizer(tmp_path / "g"), tmp_path / "spm")
    with pytest.raises(CheckpointError) as e:
        PromptTokenizer(folder)
    msg = str(e.value)
    assert "\n" not in msg and "only as tokenizer.model" in msg and \
        "download tokenizer.json of google/gemma-3-12b-it-qat-q4_0-unquantized" in msg


def test_tokenizers_of_other_kinds_are_refused(tmp_path):
    folder = write_gemma_tokenizer(tmp_path / "llama")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": "LlamaTokenizerFast"}))
    with pytest.raises(CheckpointError, match="is a LlamaTokenizerFast, not a Gemma tokenizer"):
        PromptTokenizer(folder)
