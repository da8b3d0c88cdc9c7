#!/usr/bin/env bash
# Can a shipped model learn to copy from its context? Continues models/kjv-mha-4k for 200 steps of 8 × 512
# tokens on documents that only repeat themselves (a span of 20–300 words from the training books, written 2–3
# times), then compares held-out perplexity on text whose second half repeats its first with text that does
# not (a model that copies drives the repeated half toward ppl 1), and kjv_copy with its control.
#
#   scripts/kjv_copy_probe.sh [OUT_DIR]      (default runs/copy-probe; after scripts/build.sh, about 5 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${MHA2MLA:-build/mha2mla}
out=${1:-runs/copy-probe}
bash scripts/kjv.sh data/kjv >/dev/null
mkdir -p "$out"
/usr/bin/python3 - "$out" <<'EOF'
import json, random, sys
out = sys.argv[1]
words = open("data/kjv/train.txt").read().split()
rng = random.Random(11)
with open(out + "/repeat.jsonl", "w") as f:
    for _ in range(3000):
        n = rng.randint(20, 300)
        s = rng.randrange(len(words) - n)
        span = " ".join(words[s:s + n])
        f.write(json.dumps({"text": "\n\n".join([span] * rng.choice([2, 2, 3]))}) + "\n")
# Probe texts from the held-out books: 40 spans of 100 words, each followed by itself or by another span.
val = open("data/kjv/val.txt").read().split()
rng = random.Random(1)
rep, norep = [], []
for _ in range(40):
    s = rng.randrange(len(val) - 120)
    span = " ".join(val[s:s + 100])
    rep.append(span + "\n\n" + span)
    s2 = rng.randrange(len(val) - 120)
    norep.append(span + "\n\n" + " ".join(val[s2:s2 + 100]))
open(out + "/repeated.txt", "w").write("\n\n\n".join(rep))
open(out + "/unrepeated.txt", "w").write("\n\n\n".join(norep))
EOF
rm -rf "$out/tok" "$out/init" "$out/run"
$B data --tokenizer data/kjv/tokenizer --in "$out/repeat.jsonl" --out "$out/tok" --val-fraction 0.02
$B cast --model models/kjv-mha-4k --out "$out/init" --dtype f32 >/dev/null
$B train --model "$out/init" --data "$out/tok" --val data/kjv/tok --out "$out/run" --steps 200 --batch 8 \
  --seq-len 512 --lr 1.5e-3 --min-lr 1.5e-4 --warmup 10 --decay-start 150 --decay 1-sqrt --weight-decay 0.1 \
  --precision bf16 --val-every 100 --val-windows 32 --save-every 200 --seed 3 >/dev/null
for m in models/kjv-mha-4k "$out/run/model"; do
  for t in repeated unrepeated; do
    echo "$m $t ppl: $($B ppl --model "$m" --text "$out/$t.txt" --ctx 512 --stride 256 --json |
      /usr/bin/python3 -c 'import json,sys; print(round(json.load(sys.stdin)["ppl"], 2))')"
  done
  for t in kjv_copy kjv_copy_control; do
    echo "$m $t acc_norm_nospace: $($B eval --model "$m" --task mc --data "tasks/kjv/$t.jsonl" --json |
      /usr/bin/python3 -c 'import json,sys; print(round(100 * json.load(sys.stdin)["metrics"]["acc_norm_nospace"], 1))')"
  done
done | tee "$out/probe.txt"
