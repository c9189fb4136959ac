"""Gemma-like tokenizer folders for the tokenizer tests: a small byte-fallback BPE laid out as Gemma-3 ships it
(normalizer ▁ for spaces, BOS from the config, special and added tokens in tokenizer_config.json), and variants
of its config files that change what transformers' AutoTokenizer (the reference's tokenizer) does."""

import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
CORPUS = ["a cat walks on the beach at sunset", "the camera pans slowly over snowy mountains at night",
          "a red car drives through a rainy city", "close-up of a dog running in a field of flowers",
          "Ein Hund läuft über die Straße", "un chat noir dort près de la fenêtre", "雨の夜の街を歩く猫",
          "waves crash against the rocks, birds fly above"] * 20


def _bpe(vocab_size: int = 320) -> dict:
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                                        show_progress=False))
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for b in range(256):  # byte fallback needs <0xNN> pieces in the vocabulary, as Gemma's has
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    return data


def _added(content: str, special: bool = True) -> dict:
    return {"content": content, "lstrip": False, "normalized": not special, "rstrip": False, "single_word": False,
            "special": special}


def write_gemma_tokenizer(folder: Path, variant: str = "gemma3") -> Path:
    """Variants: gemma3 (as released: added_tokens_decoder, special_tokens_map, added_tokens.json), legacy (no
    added_tokens_decoder: special_tokens_map.json and added_tokens.json are read instead), eos (add_eos_token),
    no_pad (pad_token null: EOS pads), truncate_left, plain (PreTrainedTokenizerFast: tokenizer.json's own
    post-processor, no Gemma defaults), no_config (tokenizer.json and a Gemma config.json alone)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = _bpe()
    vocab = data["model"]["vocab"]
    image = "<image_soft_token>"
    data["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                                                        {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<bos>": {"id": "<bos>", "ids": [vocab["<bos>"]],
                                                           "tokens": ["<bos>"]}}}
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    added = {str(vocab[t]): _added(t) for t in SPECIAL}
    cfg = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
           "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
           "added_tokens_decoder": {**added, str(len(vocab)): _added(image)}, "image_token": image,
           "extra_special_tokens": {"image_token": image}, "model_max_length": 1000000000000000019884624838656,
           "padding_side": "left", "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False}
    special_map = {"bos_token": _added("<bos>"), "eos_token": _added("<eos>"), "pad_token": _added("<pad>"),
                   "unk_token": _added("<unk>"), "image_token": image}
    for d in special_map.values():
        if isinstance(d, dict):
            d.pop("special")
    if variant == "legacy":
        del cfg["added_tokens_decoder"], cfg["extra_special_tokens"]
        cfg["pad_token"] = "<mask>"  # overridden by special_tokens_map.json's <pad>
    elif variant == "eos":
        cfg["add_eos_token"] = True
    elif variant == "no_pad":
        cfg["pad_token"] = None
    elif variant == "truncate_left":
        cfg["truncation_side"] = "left"
    elif variant == "plain":
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>"}
    if variant == "no_config":  # AutoTokenizer then goes by config.json's model type
        (folder / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}), encoding="utf-8")
    else:
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
        (folder / "special_tokens_map.json").write_text(json.dumps(special_map), encoding="utf-8")
        (folder / "added_tokens.json").write_text(json.dumps({image: len(vocab)}), encoding="utf-8")
    return folder


VARIANTS = ["gemma3", "legacy", "eos", "no_pad", "truncate_left", "plain", "no_config"]


def copy_without_tokenizer_json(folder: Path, out: Path) -> Path:
    shutil.copytree(folder, out)
    (out / "tokenizer.json").unlink()
    (out / "tokenizer.model").write_bytes(b"\x0a\x00")  # a sentencepiece file's place
    return out
