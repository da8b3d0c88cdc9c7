#!/usr/bin/python3
"""Independent log-likelihoods of continuations, one unpadded sequence at a time.

Input JSON: {"max_length": N, "requests": [{"context": [ids], "continuation": [ids]}, ...]}. Each request is
scored on (context + continuation)[-(N + 1):][:-1], the last len(continuation) logits predicting the
continuation. Prints a JSON list of summed log-probabilities. Run with Debian's /usr/bin/python3.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_ref import Ref  # noqa: E402


def main():
    model_dir, req_path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    with open(req_path) as f:
        spec = json.load(f)
    ref = Ref(model_dir, torch.float32)
    out = []
    with torch.no_grad():
        for r in spec["requests"]:
            whole = r["context"] + r["continuation"]
            inp = whole[-(spec["max_length"] + 1):][:-1]
            n = len(r["continuation"])
            logits = ref.forward(torch.tensor([inp], dtype=torch.int64))[0]
            logp = torch.log_softmax(logits[-n:].double(), -1)
            target = torch.tensor(r["continuation"], dtype=torch.int64)
            out.append(logp.gather(1, target[:, None]).sum().item())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
