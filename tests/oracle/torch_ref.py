#!/usr/bin/python3
"""Independent PyTorch reference for Llama-family decoders (llama, mistral, qwen2, qwen3).

Reads an HF-layout folder (config.json + model.safetensors, parsed by hand) and writes logits for
given token ids to a safetensors file. Also times prefill and an eager decode loop (--bench).
Run it with Debian's interpreter (/usr/bin/python3), which has python3-torch.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
          "I32": torch.int32, "F64": torch.float64}
NAMES = {v: k for k, v in DTYPES.items()}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = bytearray(data[base + b:base + e])
        t = torch.frombuffer(buf, dtype=DTYPES[info["dtype"]]) if len(buf) else torch.empty(0, dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).clone()
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        t = t.contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(path + ".tmp", path)


def load_weights(model_dir):
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        w = {}
        for fn in files:
            w.update(read_safetensors(os.path.join(model_dir, fn)))
        return w
    return read_safetensors(os.path.join(model_dir, "model.safetensors"))


class Ref:
    def __init__(self, model_dir, dtype):
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        self.c = c
        self.dtype = dtype
        self.w = {k: v.to(dtype) for k, v in load_weights(model_dir).items()}
        self.L = c["num_hidden_layers"]
        self.H = c["num_attention_heads"]
        self.KV = c.get("num_key_value_heads", self.H)
        self.D = c.get("head_dim") or c["hidden_size"] // self.H
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.qk_norm = c["model_type"] == "qwen3"
        theta = c.get("rope_theta", 10000.0)
        inv = 1.0 / (theta ** (torch.arange(0, self.D, 2, dtype=torch.int64).float() / self.D))
        rs = c.get("rope_scaling") or {}
        kind = rs.get("rope_type", rs.get("type", "default"))
        if kind == "linear":
            inv = inv / rs["factor"]
        elif kind == "llama3":
            f, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
            wl = 2 * math.pi / inv
            new = []
            for fr, w in zip(inv.tolist(), wl.tolist()):
                if w < old / hi:
                    new.append(fr)
                elif w > old / lo:
                    new.append(fr / f)
                else:
                    s = (old / w - lo) / (hi - lo)
                    new.append((1 - s) * fr / f + s * fr)
            inv = torch.tensor(new, dtype=torch.float32)
        self.inv = inv
        self.partial = None  # per layer, per KV head: kept frequency indices
        self.lm_head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        if c.get("tie_word_embeddings", False):
            self.lm_head = self.w["model.embed_tokens.weight"]

    def norm(self, x, w):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    def lin(self, x, name):
        b = self.w.get(name + ".bias")
        return torch.nn.functional.linear(x, self.w[name + ".weight"], b)

    def rope(self, x, pos, layer=None):  # x [B,H,T,D], pos [T]
        fr = pos.float()[:, None] * self.inv[None, :]
        emb = torch.cat([fr, fr], -1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        h = self.D // 2
        rot = torch.cat([-x[..., h:], x[..., :h]], -1)
        out = x * cos + rot * sin
        if self.partial is not None:
            # Partial RoPE as a mask: rotate everything, then restore the dims whose pair is not kept.
            # Heads map to KV heads as repeat_kv does (head j -> j // (H / n_kv)).
            heads = x.shape[1]
            per_kv = self.partial[layer]
            g = heads // len(per_kv)
            mask = torch.zeros(heads, self.D, dtype=torch.bool)
            for j in range(heads):
                for f in per_kv[j // g]:
                    mask[j, f] = True
                    mask[j, f + h] = True
            out = torch.where(mask[None, :, None, :], out, x)
        return out

    def forward(self, ids, cache=None, start=0):
        """ids [B,T]; cache: list of (k, v) per layer, extended in place."""
        B, T = ids.shape
        pos = torch.arange(start, start + T)
        x = self.w["model.embed_tokens.weight"][ids]
        S = start + T
        mask = torch.full((T, S), float("-inf")).triu(start + 1).to(self.dtype)
        g = self.H // self.KV
        for i in range(self.L):
            p = f"model.layers.{i}."
            h = self.norm(x, self.w[p + "input_layernorm.weight"])
            q = self.lin(h, p + "self_attn.q_proj").view(B, T, self.H, self.D)
            k = self.lin(h, p + "self_attn.k_proj").view(B, T, self.KV, self.D)
            v = self.lin(h, p + "self_attn.v_proj").view(B, T, self.KV, self.D).transpose(1, 2)
            if self.qk_norm:
                q = self.norm(q, self.w[p + "self_attn.q_norm.weight"])
                k = self.norm(k, self.w[p + "self_attn.k_norm.weight"])
            q = self.rope(q.transpose(1, 2), pos, i)
            k = self.rope(k.transpose(1, 2), pos, i)
            if cache is not None:
                if len(cache) <= i:
                    cache.append((k, v))
                else:
                    k = torch.cat([cache[i][0], k], 2)
                    v = torch.cat([cache[i][1], v], 2)
                    cache[i] = (k, v)
            k = k.repeat_interleave(g, dim=1)
            v = v.repeat_interleave(g, dim=1)
            s = q @ k.transpose(2, 3) / math.sqrt(self.D) + mask
            a = torch.softmax(s.float(), -1).to(self.dtype) @ v
            x = x + self.lin(a.transpose(1, 2).reshape(B, T, self.H * self.D), p + "self_attn.o_proj")
            h = self.norm(x, self.w[p + "post_attention_layernorm.weight"])
            m = self.lin(torch.nn.functional.silu(self.lin(h, p + "mlp.gate_proj")) * self.lin(h, p + "mlp.up_proj"),
                         p + "mlp.down_proj")
            x = x + m
        x = self.norm(x, self.w["model.norm.weight"])
        return (x @ self.lm_head.t()).float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", help="JSON file: list of lists of token ids (equal lengths)")
    ap.add_argument("--out", help="safetensors file to write 'logits' [B,T,V] into")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bench", action="store_true", help="time prefill and an eager decode loop; print JSON")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--partial-rope", help="JSON [layer][kv_head] -> kept frequency indices")
    ap.add_argument("--ppl-ids", help="JSON list of token ids: print sliding-window perplexity as JSON")
    ap.add_argument("--ctx", type=int, default=0)
    ap.add_argument("--stride", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads or os.cpu_count())
    dtype = torch.float32 if a.dtype == "f32" else torch.bfloat16
    ref = Ref(a.model, dtype)
    if a.partial_rope:
        with open(a.partial_rope) as f:
            ref.partial = json.load(f)
    with torch.no_grad():
        if a.bench:
            V = ref.c["vocab_size"]
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, V, (1, a.prompt_len), generator=g)
            best_p, best_d = 1e9, 1e9
            for _ in range(a.repeats):
                cache = []
                t0 = time.perf_counter()
                logits = ref.forward(ids, cache, 0)
                t1 = time.perf_counter()
                tok = logits[:, -1].argmax(-1, keepdim=True)
                for i in range(a.new):
                    logits = ref.forward(tok, cache, a.prompt_len + i)
                    tok = logits[:, -1].argmax(-1, keepdim=True)
                t2 = time.perf_counter()
                best_p, best_d = min(best_p, t1 - t0), min(best_d, t2 - t1)
            print(json.dumps({"prefill_tokens_per_s": a.prompt_len / best_p, "decode_tokens_per_s": a.new / best_d,
                              "threads": torch.get_num_threads(), "dtype": a.dtype}))
            return
        if a.ppl_ids:
            with open(a.ppl_ids) as f:
                ids = torch.tensor(json.load(f), dtype=torch.int64)
            n, nll_sum, count = len(ids), 0.0, 0
            ends = [min(a.ctx, n)]
            while ends[-1] < n:
                ends.append(min(ends[-1] + min(a.stride, a.ctx - 1), n))
            prev_end = 1
            for end in ends:
                begin = max(0, end - a.ctx)
                x = ids[begin:end].unsqueeze(0)
                logits = ref.forward(x)[0]
                # logits at position p predict token p+1 (absolute begin+p+1)
                lo, hi = prev_end - begin - 1, end - begin - 1
                nll_sum += torch.nn.functional.cross_entropy(logits[lo:hi], ids[prev_end:end], reduction="sum").item()
                count += end - prev_end
                prev_end = end
            print(json.dumps({"nll": nll_sum / count, "ppl": math.exp(nll_sum / count), "tokens": count}))
            return
        with open(a.ids) as f:
            ids = torch.tensor(json.load(f), dtype=torch.int64)
        logits = ref.forward(ids)
        write_safetensors(a.out, {"logits": logits.contiguous()})


if __name__ == "__main__":
    main()
