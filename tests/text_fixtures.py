"""Tiny Gemma-3 folders (random weights, a small tokenizer) and tiny official LTX text-projection files."""

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig

WORDS = ["a", "cat", "dog", "walks", "runs", "on", "the", "beach", "at", "sunset", "red", "car", "city", "night",
         "rain", "slowly", "camera", "pans", "over", "mountains"] + [f"w{i}" for i in range(40)]

# Small but complete: 7 layers (local layers 0-4 and 6, global layer 5), sliding window 4, GQA 4:2,
# query_pre_attn_scalar != head_dim, linear-scaled global RoPE.
TINY_TEXT = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=7, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
                 rope_scaling={"rope_type": "linear", "factor": 8.0}, rope_theta=1_000_000.0,
                 rope_local_base_freq=10_000.0)
TINY_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                   patch_size=14)


def write_tokenizer(folder: Path) -> None:
    """A word-level GemmaTokenizerFast: <pad>=0, <eos>=1, <bos>=2 (Gemma's ids), BOS added by the tokenizer."""
    special = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(special + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}))


def randomize_params_(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Random parameters only: Gemma's buffers (embed_scale, rotary inv_freq) are computed, not learned."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def tiny_gemma(kind: str = "multimodal", seed: int = 0, **text_overrides):
    text = {**TINY_TEXT, **text_overrides}
    if kind == "multimodal":
        cfg = Gemma3Config(text_config=text, vision_config=TINY_VISION, mm_tokens_per_image=4)
        model = Gemma3ForConditionalGeneration(cfg)
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(**text))
    return randomize_params_(model.eval(), seed)


def save_gemma_folder(model, folder: Path, shard: bool = True, tokenizer: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), max_shard_size="40KB" if shard else "10GB")
    if tokenizer:
        write_tokenizer(folder)
    return folder


def hf_hidden_states(model, input_ids, attention_mask):
    """What the reference's GemmaTextEncoder.encode returns: model.model(..., output_hidden_states=True)."""
    with torch.no_grad():
        out = model.model(input_ids=torch.as_tensor(input_ids, dtype=torch.long),
                          attention_mask=torch.as_tensor(attention_mask, dtype=torch.long), output_hidden_states=True)
    return out.hidden_states
