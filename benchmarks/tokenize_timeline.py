"""Where the time of one `cs336-basics tokenize` run goes: start-up, each worker's busy time, the tail.

    uv run python benchmarks/tokenize_timeline.py CORPUS --tokenizer DIR --workers 2
    uv run python benchmarks/tokenize_timeline.py CORPUS --tokenizer DIR --workers 2 --pin 0 1   # parent, child CPUs

Runs the tokenize command in this process with every range's encoding timed (seconds from this script's start,
which is before the tokenize module is imported, as in bench_tokenizer.py), then prints per worker: ranges, MiB,
busy seconds and seconds per 4 MiB; and for the run: when the first range started (the serial start), when the
last one ended, and the total. With --pin, the parent and the children are pinned to the given CPUs (Linux), to
tell a slow core from a slow process.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="UTF-8 text file to encode")
    parser.add_argument("--tokenizer", required=True, type=Path, metavar="DIR", help="tokenizer directory")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="encoding processes (default 2)")
    parser.add_argument("--pin", type=int, nargs=2, metavar=("PARENT", "CHILD"), help="CPUs to pin to (Linux)")
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {args.pin[0]})

    from cs336_basics.workflows import tokenize as tokenize_dataset

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "ranges.log"
        encode_range, child = tokenize_dataset._encode_range, tokenize_dataset._child

        def timed_encode_range(path, start, end, dtype, tokenizer):
            began = time.perf_counter() - T0
            ids = encode_range(path, start, end, dtype, tokenizer)
            with open(log, "a") as f:  # one short line per range, appended: whole lines from each process
                f.write(f"{os.getpid()} {began:.4f} {time.perf_counter() - T0:.4f} {end - start}\n")
            return ids

        def pinned_child(*child_args):
            os.sched_setaffinity(0, {args.pin[1]})
            return child(*child_args)

        tokenize_dataset._encode_range = timed_encode_range  # forked children inherit both replacements
        if args.pin:
            tokenize_dataset._child = pinned_child
        tokenize_dataset.tokenize_file(args.input, Path(tmp) / "out.bin", args.tokenizer, num_workers=args.workers)
        total = time.perf_counter() - T0
        rows = [line.split() for line in log.read_text().splitlines()]

    parent = str(os.getpid())
    by_pid: dict[str, list[tuple[float, float, int]]] = {}
    for pid, began, ended, size in rows:
        by_pid.setdefault(pid, []).append((float(began), float(ended), int(size)))
    for pid, ranges in sorted(by_pid.items(), key=lambda item: item[0] != parent):
        busy = sum(e - b for b, e, _ in ranges)
        mib = sum(s for _, _, s in ranges) / 2**20
        who = "parent" if pid == parent else f"child {pid}"
        print(
            f"{who:>12}: {len(ranges):3d} ranges, {mib:7.1f} MiB, busy {busy:6.2f} s, {4 * busy / mib:.3f} s per 4 MiB"
        )
    first = min(float(r[1]) for r in rows)
    last = max(float(r[2]) for r in rows)
    print(f"first range starts at {first:.3f} s, last range ends at {last:.3f} s, total {total:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
