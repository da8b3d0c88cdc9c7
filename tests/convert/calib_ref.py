#!/usr/bin/python3
"""Independent reference for `mha2mla calibrate` statistics.

Runs the PyTorch reference decoder (tests/oracle/torch_ref.py) over consecutive windows of token ids,
captures each layer's attention input (the output of input_layernorm) and writes the mean q/k pair
norms and the attention-input covariances (training and held-out windows) to a safetensors file.
Run it with Debian's interpreter (/usr/bin/python3), which has python3-torch.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "oracle"))
from torch_ref import Ref, write_safetensors  # noqa: E402


class CapturingRef(Ref):
    """The reference model, recording what each layer's input_layernorm returns."""

    def __init__(self, model_dir):
        super().__init__(model_dir, torch.float32)
        self.layer_of = {id(self.w[f"model.layers.{i}.input_layernorm.weight"]): i for i in range(self.L)}
        self.seen = []

    def norm(self, x, w):
        y = super().norm(x, w)
        if id(w) in self.layer_of:
            self.seen.append((self.layer_of[id(w)], y))
        return y


def pair_norms(y, heads, d):
    # ||(v[i], v[i + d/2])|| for i < d/2, per token and head
    v = y.reshape(-1, heads, d)
    return torch.sqrt(v[..., : d // 2] ** 2 + v[..., d // 2:] ** 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="JSON list of token ids")
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--ctx", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(2)
    ref = CapturingRef(a.model)
    with open(a.ids) as f:
        ids = torch.tensor(json.load(f), dtype=torch.int64)
    windows = min(a.samples, len(ids) // a.ctx)
    heldout = max(1, int(windows / 10 + 0.5)) if windows >= 2 else 0
    train = windows - heldout
    d = ref.c["hidden_size"]
    q_sum = torch.zeros(ref.L, ref.H, ref.D // 2, dtype=torch.float64)
    k_sum = torch.zeros(ref.L, ref.KV, ref.D // 2, dtype=torch.float64)
    cov = [torch.zeros(d, d, dtype=torch.float64) for _ in range(ref.L)]
    cov_ho = [torch.zeros(d, d, dtype=torch.float64) for _ in range(ref.L)]
    with torch.no_grad():
        for w in range(windows):
            ref.seen = []
            ref.forward(ids[w * a.ctx:(w + 1) * a.ctx].unsqueeze(0))
            assert len(ref.seen) == ref.L
            for layer, x in ref.seen:
                x = x.reshape(-1, d)
                xd = x.double()
                if w >= train:
                    cov_ho[layer] += xd.t() @ xd
                    continue
                cov[layer] += xd.t() @ xd
                p = f"model.layers.{layer}.self_attn."
                q = ref.lin(x, p + "q_proj")  # before q_norm (qwen3) and RoPE, as the statistic is defined
                k = ref.lin(x, p + "k_proj")
                q_sum[layer] += pair_norms(q, ref.H, ref.D).double().sum(0)
                k_sum[layer] += pair_norms(k, ref.KV, ref.D).double().sum(0)
    n, n_ho = train * a.ctx, heldout * a.ctx
    out = {"q_norm": (q_sum / n).float(), "k_norm": (k_sum / n).float()}
    for i in range(ref.L):
        out[f"cov.{i}"] = cov[i] / n
        out[f"cov_heldout.{i}"] = cov_ho[i] / n_ho if n_ho else cov_ho[i]
    out["counts"] = torch.tensor([n, n_ho, windows], dtype=torch.int64)
    write_safetensors(a.out, out)


if __name__ == "__main__":
    main()
