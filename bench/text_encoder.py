"""Time the text path with random weights: Gemma-3 (every hidden state) and the LTX text projection.

Full size is Gemma-3-12B at 1024 tokens (run it on Apple silicon); `--layers/--hidden` shrink it for a CPU check:
    python bench/text_encoder.py --layers 4 --hidden 256 --tokens 256 --dtype float32
"""

import argparse
import time

import mlx.core as mx

from ltx_mlx.models.gemma3 import Gemma3Config, Gemma3TextModel
from ltx_mlx.weights.quantize import QuantizationPlan, decoder_layer_linears, quantize_model
from ltx_mlx.models.text_projection import TextProjection, TextProjectionConfig

LTX23 = {"rope_type": "split", "frequencies_precision": "float64", "connector_attention_head_dim": 128,
         "connector_num_learnable_registers": 128, "connector_positional_embedding_max_pos": [4096],
         "num_attention_heads": 32, "attention_head_dim": 128, "audio_num_attention_heads": 32,
         "audio_attention_head_dim": 64, "connector_num_attention_heads": 32, "connector_num_layers": 8,
         "audio_connector_num_attention_heads": 32, "audio_connector_attention_head_dim": 64,
         "connector_apply_gated_attention": True, "caption_proj_before_connector": True,
         "caption_projection_first_linear": False, "caption_proj_input_norm": False,
         "caption_projection_second_linear": False}


def timed(label, fn, repeats):
    fn()  # warm-up
    mx.reset_peak_memory()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    ms = (time.perf_counter() - start) / repeats * 1e3
    print(f"{label}: {ms:.1f} ms, peak {mx.get_peak_memory() / 2**30:.2f} GiB")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--hidden", type=int, default=3840)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--valid", type=int, default=100, help="prompt tokens; the rest is left padding")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--bits", type=int, default=0, help="quantize Gemma to 4 or 8 bits (0: no)")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    dtype = getattr(mx, args.dtype)
    full = args.hidden == 3840
    cfg = Gemma3Config.from_dict({"hidden_size": args.hidden, "intermediate_size": 4 * args.hidden,
                                  "num_hidden_layers": args.layers, "num_attention_heads": 16 if full else 4,
                                  "num_key_value_heads": 8 if full else 2, "head_dim": 256 if full else 64,
                                  "vocab_size": 262208 if full else 1024, "sliding_window": 1024,
                                  "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    gemma = Gemma3TextModel(cfg)
    gemma.set_dtype(dtype)
    if args.bits:
        quantize_model(gemma, QuantizationPlan(bits=args.bits, group_size=64), decoder_layer_linears)
    mx.eval(gemma.parameters())
    T = args.tokens
    ids = mx.random.randint(3, 1000, (1, T))
    mask = (mx.arange(T) >= T - args.valid).astype(mx.int32)[None]
    timed(f"Gemma {args.layers} layers x {args.hidden}, {T} tokens, {args.dtype}{f', {args.bits}-bit' if args.bits else ''}",
          lambda: mx.eval(gemma(ids, mask, eval_each_layer=True)), args.repeats)
    states = gemma(ids, mask)
    mx.eval(states)
    del gemma
    t = dict(LTX23, **({} if full else {"num_attention_heads": 4, "attention_head_dim": 32, "connector_num_attention_heads": 4,
                                        "connector_attention_head_dim": 32, "audio_num_attention_heads": 4,
                                        "audio_connector_num_attention_heads": 4, "audio_attention_head_dim": 16,
                                        "audio_connector_attention_head_dim": 16}))
    projection = TextProjection(TextProjectionConfig.from_dict(t, args.hidden, args.layers + 1))
    projection.set_dtype(dtype)
    mx.eval(projection.parameters())
    timed("LTX-2.3 text projection (feature extractor V2 + 2 connectors)",
          lambda: mx.eval(projection(states, mask)), args.repeats)


if __name__ == "__main__":
    main()
