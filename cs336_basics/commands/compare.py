"""`cs336-basics compare`: loss curves of several runs in one figure, and a table of their results and settings.

    cs336-basics compare runs/a runs/b --out report/
    cs336-basics compare sweeps/lr --x tokens --train --out sweeps/lr/report   # a sweep directory = its runs

Writes OUT/loss.png, OUT/table.md and OUT/table.csv and prints the Markdown table (see
`cs336_basics.workflows.compare`).
"""

import argparse


def add_parser(subparsers) -> None:
    from cs336_basics.workflows.compare import X_AXES  # (no torch import)

    parser = subparsers.add_parser(
        "compare",
        help="plot the loss curves of runs (or sweeps) in one figure and tabulate their results and settings",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories and/or sweep directories")
    parser.add_argument(
        "--x", choices=tuple(X_AXES), default="steps", help="x axis: steps, tokens or wall-clock seconds; default steps"
    )
    parser.add_argument("--train", action="store_true", help="also draw each run's training loss (dashed)")
    parser.add_argument("--out", default="report", metavar="DIR", help="output directory; default ./report")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cs336_basics.workflows.compare import compare

    report = compare(args.runs, args.out, x=args.x, show_train=args.train)
    print(open(report["markdown"]).read(), end="")
    print(f"wrote {report['figure']}, {report['markdown']}, {report['csv']}")
    return 0
