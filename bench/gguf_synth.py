"""Writes a llama-architecture GGUF of a named shape with random weights, for timing llama.cpp beside
`mha2mla bench` on the same shape (bench/llama_cpp_vs.sh). Speed does not depend on the values, so the
weights are N(0, 0.02) and the vocabulary is placeholder tokens; the file is not meant to generate text.

  python3 gguf_synth.py GGUF_PY_DIR OUT.gguf SHAPE TYPE      SHAPE: smollm-135m | smollm-360m; TYPE: f32 | bf16
"""
import sys
import types

import numpy as np

# Shapes as src/infer/bench.cpp's shape_config defines them: vocab, hidden, intermediate, layers, heads, kv heads.
SHAPES = {
    "smollm-135m": (49152, 576, 1536, 30, 9, 3),
    "smollm-360m": (49152, 960, 2560, 32, 15, 5),
}


def main():
    if len(sys.argv) != 5 or sys.argv[3] not in SHAPES or sys.argv[4] not in ("f32", "bf16"):
        sys.exit(__doc__)
    gguf_py, out, shape, wtype = sys.argv[1:]
    # gguf-py imports sentencepiece for vocabularies this script never reads.
    sys.modules.setdefault("sentencepiece", types.SimpleNamespace(SentencePieceProcessor=None))
    sys.path.insert(0, gguf_py)
    import gguf

    vocab, d, inter, layers, heads, kv_heads = SHAPES[shape]
    dh = d // heads
    w = gguf.GGUFWriter(out, "llama")
    w.add_name(f"synthetic {shape}")
    w.add_context_length(32768)
    w.add_embedding_length(d)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(dh)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if wtype == "f32" else gguf.LlamaFileType.MOSTLY_BF16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(["t", "0"] + [f"t{i}" for i in range(2, vocab)])
    w.add_token_types([gguf.TokenType.NORMAL] * vocab)
    w.add_token_merges(["t 0"])  # llama.cpp wants the key present; an empty array is not written
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    rng = np.random.default_rng(0)

    def matrix(name, rows, cols):
        a = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float32)
        if wtype == "bf16":
            # Round to nearest even, as the runtime's bf16 weights are.
            u = a.view(np.uint32)
            u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
            w.add_tensor(name, u, raw_shape=(rows, cols), raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(name, a)

    def norm(name):
        w.add_tensor(name, np.ones(d, dtype=np.float32))

    # Tied embeddings: no output.weight, so llama.cpp reads token_embd as the output projection, as we do.
    matrix("token_embd.weight", vocab, d)
    norm("output_norm.weight")
    for i in range(layers):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight")
        matrix(p + "attn_q.weight", heads * dh, d)
        matrix(p + "attn_k.weight", kv_heads * dh, d)
        matrix(p + "attn_v.weight", kv_heads * dh, d)
        matrix(p + "attn_output.weight", d, heads * dh)
        norm(p + "ffn_norm.weight")
        matrix(p + "ffn_gate.weight", inter, d)
        matrix(p + "ffn_up.weight", inter, d)
        matrix(p + "ffn_down.weight", d, inter)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
