#!/bin/bash
# How close can 2 processes on this machine get to 2x? Two checks that involve no parallel code of ours:
#   1. a pure-Python loop: one copy alone, then two copies at once (each copy's seconds);
#   2. the tokenize CLI with 1 worker on each half of CORPUS: one half after the other, then both at once.
# If two copies of the loop each run slower than one alone, no 2-process job reaches 2x here.
#   bash benchmarks/parallel_ceiling.sh CORPUS TOKENIZER_DIR
# Run from the repository root, with `python3` able to import cs336_basics (e.g. under `uv run`, or PYTHONPATH=.).
set -euo pipefail
corpus=$1 tok=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
spin='import time
t = time.perf_counter()
x = 0
for i in range(20_000_000):
    x += i
print(f"{time.perf_counter() - t:.2f}")'
for round in 1 2; do
    alone=$(python3 -c "$spin")
    pair=$( (python3 -c "$spin" & python3 -c "$spin"; wait) | tr '\n' ' ')
    echo "python loop: alone ${alone} s; two at once ${pair}s"
done
python3 - "$corpus" "$tmp" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
cut = data.index(b" ", len(data) // 2) + 1  # after a space: a valid cut for the tokenizer
open(f"{sys.argv[2]}/h1.txt", "wb").write(data[:cut])
open(f"{sys.argv[2]}/h2.txt", "wb").write(data[cut:])
PY
run() { python3 -m cs336_basics.cli tokenize "$tmp/$1.txt" --tokenizer "$tok" --out "$tmp/$1.bin" --no-progress >/dev/null; }
now() { date +%s.%N; }
run h1  # fills the tokenizer cache
for round in 1 2; do
    s=$(now); run h1; m=$(now); run h2; e=$(now)
    run h1 & run h2; wait; f=$(now)
    python3 -c "print(f'tokenize halves: one after the other {$m - $s:.2f} s + {$e - $m:.2f} s; both at once {$f - $e:.2f} s')"
done
