#!/usr/bin/python3
"""Evaluation tasks from the KJV books held out of pretraining (see scripts/kjv.sh), written as JSON Lines.

    scripts/kjv_tasks.py [--out tasks/kjv] [--seed 2026] [--mc 400] [--retrieval 512:40,1024:20,2048:10,4096:6]

Needs data/kjv/val.txt (scripts/kjv.sh) and a built mha2mla (for token counts with models/kjv-mha's tokenizer;
MHA2MLA=path overrides build/mha2mla). Standard library only; the same seed gives the same files.

kjv_mc.jsonl (`mha2mla eval --task mc`): 4-way verse continuation. The query is a verse's first half (cut at a
word boundary near the middle), the gold choice its true second half, the three distractors second halves of
other held-out verses whose length is within 25% of the gold's. Chance: 25%.

kjv_retrieval_<T>.jsonl (`mha2mla eval --task longbench`, dataset kjv_retrieval), in LongBench's schema: the
context holds N numbered passages of consecutive held-out verses, about T tokens in all; the input quotes one
verse of one passage and asks for its number; scored with retrieval_score. Chance: 1/N.
kjv_retrieval_tagged_<T>.jsonl is the easier form: every verse in the context ends with its passage tag
"(Paragraph k)", and the input is the quoted verse followed by "(Paragraph", so the answer is a copy of the
tag seen after the same verse earlier.

kjv_copy.jsonl (`--task mc`): the easiest form of retrieval. Four whole verses, then the first half of one of
them; the choices are the four second halves, so the answer was seen a few lines earlier. Chance: 25%.
kjv_copy_control.jsonl holds the same rows without the four verses: a model that uses its context scores
higher on kjv_copy than on the control.
"""
import argparse
import json
import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_chapters(path):
    chapters, cur = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                if cur:
                    chapters.append(cur)
                cur = []
            else:
                cur.append(line)
    if cur:
        chapters.append(cur)
    return chapters


def token_counts(texts, binary, tokenizer):
    """Tokens of each text (without special tokens), from `mha2mla tokenize`."""
    for t in texts:
        if "\n" in t:
            raise ValueError("texts must be single lines")
    p = subprocess.run([binary, "tokenize", "--tokenizer", tokenizer], input="\n".join(texts) + "\n",
                       capture_output=True, text=True, check=True)
    counts = [len(json.loads(l)) for l in p.stdout.splitlines()]
    if len(counts) != len(texts):
        raise RuntimeError("tokenize returned %d lines for %d texts" % (len(counts), len(texts)))
    return counts


def split_verse(words):
    """Cut near the middle at a word boundary: (first half, second half)."""
    mid = len(words) // 2
    return " ".join(words[:mid]), " ".join(words[mid:])


def make_mc(verses, n, rng):
    cands = [v for v in verses if len(v.split()) >= 8]
    halves = [split_verse(v.split()) for v in cands]
    order = list(range(len(cands)))
    rng.shuffle(order)
    rows = []
    for i in order:
        if len(rows) == n:
            break
        query, gold = halves[i]
        lo, hi = 0.75 * len(gold), 1.25 * len(gold)
        pool = [j for j in range(len(cands)) if j != i and lo <= len(halves[j][1]) <= hi and halves[j][1] != gold]
        if len(pool) < 3:  # an unusually long verse: no fair distractors
            continue
        distractors = [halves[j][1] for j in rng.sample(pool, 3)]
        choices = [gold] + distractors
        rng.shuffle(choices)
        rows.append({"query": query, "choices": [" " + c for c in choices], "gold_index": choices.index(gold)})
    return rows


def make_copy(verses, n_rows, n, rng):
    """The easiest retrieval: n whole verses, then the first half of one of them; the choices are the n second
    halves. Returns the rows and the same rows without the verses (the control: what the model gets right
    without looking back)."""
    cands = [v for v in verses if len(v.split()) >= 8]
    rows, control = [], []
    for r in range(n_rows):
        chosen = rng.sample(cands, n)
        k = rng.randrange(n)
        halves = [split_verse(v.split()) for v in chosen]
        choices = [" " + h[1] for h in halves]
        rows.append({"query": "".join(v + "\n" for v in chosen) + "\n" + halves[k][0], "choices": choices, "gold_index": k})
        control.append({"query": halves[k][0], "choices": choices, "gold_index": k})
    return rows, control


def passages(chapters, counts, target):
    """Consecutive verses within a chapter grouped into passages of about `target` tokens."""
    out = []
    for ch in chapters:
        cur, cur_tok = [], 0
        for v in ch:
            cur.append(v)
            cur_tok += counts[v]
            if cur_tok >= target:
                out.append(cur)
                cur, cur_tok = [], 0
    return out


def make_retrieval(pool, counts, budget, n_rows, rng, tagged, verse_count):
    # Token cost estimates: a passage's verses plus its label and separators; in the tagged form every verse also
    # carries " (Paragraph k)". Rows over the budget (less a margin for the instruction, the question and the
    # separators' merges) are drawn again, so prompts fit without truncation.
    def cost(p):
        return sum(counts[v] + (6 if tagged else 1) for v in p) + 6

    per = sum(cost(p) for p in pool) / len(pool)
    n = max(2, int((budget - 120) // per))
    rows = []
    while len(rows) < n_rows:
        chosen = rng.sample(pool, n)
        k = rng.randrange(n)
        # A verse that occurs once in all of the held-out text, so the answer is unambiguous.
        unique = [v for v in chosen[k] if verse_count[v] == 1]
        verse = rng.choice(unique)
        if sum(cost(p) for p in chosen) + counts[verse] + 60 > budget - 4:
            continue
        r = len(rows)
        if tagged:
            ctx = "".join("".join("%s (Paragraph %d)\n" % (v, i + 1) for v in p) + "\n" for i, p in enumerate(chosen))
            inp = verse + " (Paragraph"
            head = "Here are %d passages from the Bible. Each verse ends with the number of its passage.\n\n" % n
        else:
            ctx = "".join("Paragraph %d: %s\n\n" % (i + 1, " ".join(p)) for i, p in enumerate(chosen))
            inp = ("The following is a verse.\n\n%s\n\nThe verse is from Paragraph" % verse)
            head = "Here are %d passages from the Bible, along with a verse. Determine which passage the verse is from.\n\n" % n
        rows.append({"_id": "kjv-retrieval%s-%d-%03d" % ("-tagged" if tagged else "", budget, r), "dataset": "kjv_retrieval",
                     "input": inp, "context": head + ctx, "answers": ["Paragraph %d" % (k + 1)],
                     "length": len((head + ctx).split()), "all_classes": None, "passages": n})
    return rows


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    print("%s: %d rows" % (os.path.relpath(path, ROOT), len(rows)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--val", default=os.path.join(ROOT, "data/kjv/val.txt"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tasks/kjv"))
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--mc", type=int, default=400, help="multiple-choice rows")
    ap.add_argument("--retrieval", default="512:40,1024:20,2048:10,4096:6",
                    help="TOKENS:ROWS,... context budgets and row counts")
    ap.add_argument("--tagged", default="512:40", help="TOKENS:ROWS,... for the tagged (easier) form")
    ap.add_argument("--passage-tokens", type=int, default=100)
    ap.add_argument("--copy", type=int, default=200, help="rows of the copy task and its control")
    a = ap.parse_args()
    binary = os.environ.get("MHA2MLA", os.path.join(ROOT, "build/mha2mla"))
    if not os.path.exists(a.val):
        sys.exit("kjv_tasks.py: %s not found (run scripts/kjv.sh first)" % a.val)
    chapters = read_chapters(a.val)
    verses = [v for ch in chapters for v in ch]
    verse_count = {}
    for v in verses:
        verse_count[v] = verse_count.get(v, 0) + 1
    counts = dict(zip(verses, token_counts(verses, binary, os.path.join(ROOT, "models/kjv-mha"))))
    os.makedirs(a.out, exist_ok=True)
    rng = random.Random(a.seed)
    write_jsonl(os.path.join(a.out, "kjv_mc.jsonl"), make_mc(verses, a.mc, rng))
    copy, control = make_copy(verses, a.copy, 4, random.Random(a.seed * 31 + 7))
    write_jsonl(os.path.join(a.out, "kjv_copy.jsonl"), copy)
    write_jsonl(os.path.join(a.out, "kjv_copy_control.jsonl"), control)
    for spec, tagged in ((a.retrieval, False), (a.tagged, True)):
        # The tagged form spends about 6 tokens per verse on tags: shorter passages keep N comparable.
        target = a.passage_tokens // 2 if tagged else a.passage_tokens
        pool = [p for p in passages(chapters, counts, target) if any(verse_count[v] == 1 for v in p)]
        for item in filter(None, spec.split(",")):
            budget, n_rows = (int(x) for x in item.split(":"))
            rows = make_retrieval(pool, counts, budget, n_rows, random.Random(a.seed * 7919 + budget + tagged), tagged,
                                  verse_count)
            name = "kjv_retrieval%s_%d.jsonl" % ("_tagged" if tagged else "", budget)
            write_jsonl(os.path.join(a.out, name), rows)


if __name__ == "__main__":
    main()
