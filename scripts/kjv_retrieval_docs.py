#!/usr/bin/python3
"""Retrieval-format training documents from the KJV *training* books, for the 4,096-position stage of
scripts/pretrain_default.sh.

    scripts/kjv_retrieval_docs.py [--train data/kjv/train.txt] [--out data/kjv/retrieval_docs.jsonl]
                                  [--docs 700] [--seed 7]

Each document is one context of numbered passages in the form of tasks/kjv/kjv_retrieval_*.jsonl (plain or
tagged, half each; about 512, 1K, 2K or 4K tokens), followed by one answered question per 64 context tokens:
a verse quoted from one passage and its passage number. The questions teach a small model to look a verse up
in its context and copy what stands next to it, which plain KJV text rarely asks for; so many of them per
context make about half of a document's tokens predictable from its context. The evaluation tasks use only
the held-out books, so no evaluated passage or verse occurs here. Writes JSON Lines {"text": ...} for
`mha2mla data`. Standard library only; the same seed gives the same file.
"""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kjv_tasks import ROOT, passages, read_chapters, token_counts  # noqa: E402

BUDGETS = (512, 1024, 2048, 4096)


def make_doc(pool, counts, verse_count, budget, tagged, questions, rng):
    def cost(p):
        return sum(counts[v] + (6 if tagged else 1) for v in p) + 6

    per = sum(cost(p) for p in pool[:2000]) / min(len(pool), 2000)
    n = max(2, int((budget - 120) // per))
    chosen = rng.sample(pool, n)
    if tagged:
        text = "Here are %d passages from the Bible. Each verse ends with the number of its passage.\n\n" % n
        text += "".join("".join("%s (Paragraph %d)\n" % (v, i + 1) for v in p) + "\n" for i, p in enumerate(chosen))
    else:
        text = ("Here are %d passages from the Bible, along with a verse. Determine which passage the verse is "
                "from.\n\n" % n)
        text += "".join("Paragraph %d: %s\n\n" % (i + 1, " ".join(p)) for i, p in enumerate(chosen))
    for _ in range(questions):
        k = rng.randrange(n)
        unique = [v for v in chosen[k] if verse_count[v] == 1]
        if not unique:
            continue
        verse = rng.choice(unique)
        if tagged:
            text += "%s (Paragraph %d)\n" % (verse, k + 1)
        else:
            text += "The following is a verse.\n\n%s\n\nThe verse is from Paragraph %d.\n\n" % (verse, k + 1)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default=os.path.join(ROOT, "data/kjv/train.txt"))
    ap.add_argument("--out", default=os.path.join(ROOT, "data/kjv/retrieval_docs.jsonl"))
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--passage-tokens", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    if not os.path.exists(a.train):
        sys.exit("kjv_retrieval_docs.py: %s not found (run scripts/kjv.sh first)" % a.train)
    binary = os.environ.get("MHA2MLA", os.path.join(ROOT, "build/mha2mla"))
    chapters = read_chapters(a.train)
    verses = [v for ch in chapters for v in ch]
    verse_count = {}
    for v in verses:
        verse_count[v] = verse_count.get(v, 0) + 1
    distinct = sorted(verse_count)
    counts = dict(zip(distinct, token_counts(distinct, binary, os.path.join(ROOT, "models/kjv-mha"))))
    pools = {}
    for tagged in (False, True):
        target = a.passage_tokens // 2 if tagged else a.passage_tokens
        pools[tagged] = [p for p in passages(chapters, counts, target) if any(verse_count[v] == 1 for v in p)]
    rng = random.Random(a.seed)
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(a.docs):
            tagged = i % 2 == 1
            budget = BUDGETS[rng.randrange(len(BUDGETS))]
            doc = make_doc(pools[tagged], counts, verse_count, budget, tagged, budget // 64, rng)
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
    os.replace(tmp, a.out)
    print("%s: %d documents" % (os.path.relpath(a.out, ROOT), a.docs))


if __name__ == "__main__":
    main()
