#!/usr/bin/python3
"""Independent PyTorch training step for the runtime's trainer: same model (torch_ref.Ref with autograd),
torch.optim.AdamW, clip_grad_norm_, and the warmup-stable-decay schedule written from its definition.

--check: trains on the batches in a JSON file and writes the final parameters to a safetensors file.
--bench: times training steps (tokens/s) on random batches and prints JSON.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_ref import Ref, write_safetensors  # noqa: E402


def lr_at(t, a):
    if a.warmup > 0 and t < a.warmup:
        return a.lr * (t + 1) / a.warmup
    if a.decay == "none" or t < a.decay_start:
        return a.lr
    x = min(1.0, (t - a.decay_start) / max(1, a.steps - a.decay_start))
    if a.decay == "cosine":
        return a.min_lr + (a.lr - a.min_lr) * 0.5 * (1 + math.cos(math.pi * x))
    return a.min_lr + (a.lr - a.min_lr) * (1 - math.sqrt(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", help="JSON: [step][micro] -> [[ids...], ...]")
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--decay-start", type=int, default=0)
    ap.add_argument("--decay", default="1-sqrt")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads or os.cpu_count())
    ref = Ref(a.model, torch.float32)
    names = sorted(ref.w)
    for n in names:
        ref.w[n].requires_grad_(True)
    if ref.c.get("tie_word_embeddings", False):
        ref.lm_head = ref.w["model.embed_tokens.weight"]
    else:
        ref.lm_head = ref.w["lm_head.weight"]
    decay = [ref.w[n] for n in names if ref.w[n].dim() >= 2]
    no_decay = [ref.w[n] for n in names if ref.w[n].dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    params = decay + no_decay

    def step(t, micro_batches):
        for g in opt.param_groups:
            g["lr"] = lr_at(t, a)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for b in micro_batches:
            x, y = b[:, :-1], b[:, 1:]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                logits = ref.forward(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
            (loss / len(micro_batches)).backward()
            total += loss.item() / len(micro_batches)
        torch.nn.utils.clip_grad_norm_(params, a.clip)
        opt.step()
        return total

    if a.bench:
        V = ref.c["vocab_size"]
        g = torch.Generator().manual_seed(0)
        batches = [torch.randint(0, V, (a.batch, a.seq_len + 1), generator=g) for _ in range(a.steps + 1)]
        step(0, [batches[0]])  # warm-up
        t0 = time.perf_counter()
        for t in range(a.steps):
            step(t, [batches[t + 1]])
        dt = time.perf_counter() - t0
        print(json.dumps({"tokens_per_s": a.steps * a.batch * a.seq_len / dt, "threads": torch.get_num_threads(),
                          "precision": a.precision}))
        return
    with open(a.batches) as f:
        data = json.load(f)
    losses = [step(t, [torch.tensor(mb, dtype=torch.int64) for mb in data[t]]) for t in range(a.steps)]
    out = {n: ref.w[n].detach() for n in names}
    write_safetensors(a.out, out)
    print(json.dumps({"losses": losses}))


if __name__ == "__main__":
    main()
