#!/usr/bin/env bash
# The King James Bible as a small training corpus, split into train/val by whole books.
#
#   scripts/kjv.sh [OUT_DIR]            (default OUT_DIR: data/kjv; needs Debian's bible-kjv package)
#
# Writes OUT_DIR/train.txt and OUT_DIR/val.txt: one verse per line without its reference, one chapter per
# document, documents separated by blank lines. Validation holds out whole books (1480 of 31102 verses,
# 4.8% of the text): Ruth, Esther, Ecclesiastes, Lamentations, Joel, Jonah, Habakkuk, Malachi, Philippians, Hebrews,
# James, 1 Peter. Then, for example:
#
#   mha2mla tokenizer-train --in data/kjv/train.txt --vocab-size 4096 --out data/kjv/tokenizer
#   mha2mla data --tokenizer data/kjv/tokenizer --in data/kjv/train.txt --val-in data/kjv/val.txt --out data/kjv/tok
#
# `bible -f` turns pretty-printing off: one verse per line, "Ge1:1 In the beginning ...", no wrapping or
# paging (about 0.1 s for all 31102 verses). Book abbreviations are bible's own (Ge, Exo, ..., Rev).
set -euo pipefail

out=${1:-data/kjv}
command -v bible >/dev/null || { echo "kjv.sh: 'bible' not found (apt-get install bible-kjv)" >&2; exit 1; }
mkdir -p "$out"
# Derived data: keep it out of version control.
[ -e "$out/.gitignore" ] || printf '*\n' >"$out/.gitignore"

raw=$(mktemp)
trap 'rm -f "$raw" "$out/train.txt.tmp" "$out/val.txt.tmp"' EXIT
bible -f "Gen1:1-Rev22:21" >"$raw"

awk -v train="$out/train.txt.tmp" -v val="$out/val.txt.tmp" '
BEGIN {
  split("Ruth Est Eccl Lam Joel Jonah Hab Mal Phi Heb Jas 1Pet", held)
  for (i in held) is_val[held[i]] = 1
}
{
  # Reference: book abbreviation (may start with a digit), chapter, ":", verse.
  if (!match($0, /^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ /)) {
    printf "kjv.sh: unexpected line %d: %s\n", NR, $0 > "/dev/stderr"; exit 1
  }
  ref = substr($0, 1, RLENGTH - 1)
  text = substr($0, RLENGTH + 1)
  match(ref, /^[1-3]?[A-Za-z]+/)
  book = substr(ref, 1, RLENGTH)
  chapter = book ":" substr(ref, RLENGTH + 1, index(ref, ":") - RLENGTH - 1)
  f = (book in is_val) ? val : train
  if (chapter != last) {
    if (f in started) printf "\n" > f  # blank line between chapters
    started[f] = 1
    last = chapter
    chapters[f]++
  }
  print text > f
  verses[f]++
  seen[book] = 1
}
END {
  for (b in is_val) if (!(b in seen)) { printf "kjv.sh: held-out book %s not found\n", b > "/dev/stderr"; exit 1 }
  printf "train: %d chapters, %d verses\nval:   %d chapters, %d verses\n", chapters[train], verses[train], chapters[val], verses[val]
}' "$raw"

mv "$out/train.txt.tmp" "$out/train.txt"
mv "$out/val.txt.tmp" "$out/val.txt"
wc -c "$out/train.txt" "$out/val.txt"
