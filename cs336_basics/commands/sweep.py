"""`cs336-basics sweep`: a grid and/or one-factor ablations of a base training config, one run directory each.

    cs336-basics sweep --config base.toml --grid lr=1e-3,3e-3,1e-2 --out sweeps/lr
    cs336-basics sweep --config base.toml --ablations norm=none,post positions=none,sinusoidal ffn=silu \\
        --out sweeps/ablations --devices cuda:0,cuda:1
    cs336-basics compare sweeps/lr --out sweeps/lr/report

Rerun the same command to continue an interrupted sweep: finished and diverged runs are skipped, the others
resume from their newest checkpoint. See `cs336_basics.workflows.sweep` for the rules.
"""

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run a grid / one-factor ablations of a training config, one run directory per point; restartable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, metavar="BASE.toml", help="TOML file of train settings (the base)")
    parser.add_argument(
        "--out", required=True, metavar="SWEEP_DIR", help="sweep directory (one run directory per point)"
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="an axis of the grid (repeatable; the points are the cartesian product); keys are train setting names",
    )
    parser.add_argument(
        "--ablations",
        nargs="+",
        default=[],
        metavar="KEY=V1,V2",
        help="one-factor-at-a-time variants of each grid point (or of the base), e.g. norm=none,post ffn=silu",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one base setting (repeatable), e.g. --set train=data/train.bin --set steps=2000",
    )
    parser.add_argument(
        "--devices",
        default=None,
        metavar="DEV[,DEV...]",
        help="one device: runs one after another there; several (cuda:0,cuda:1): one worker process per device. "
        "Default: the base config's device, runs one after another",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the points and their run directories; run nothing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cs336_basics.train_config import load_config_file
    from cs336_basics.workflows.sweep import expand_points, parse_axes, read_status, run_sweep

    base = load_config_file(args.config)
    for key, values in parse_axes(args.set, what="--set"):
        if len(values) != 1:
            raise ValueError(f"--set {key}: give exactly one value")
        base[key] = values[0]
    grid = parse_axes(args.grid, what="--grid")
    ablations = parse_axes(args.ablations, what="--ablations")
    devices = [d.strip() for d in args.devices.split(",")] if args.devices else None
    if args.dry_run:
        for point in expand_points(grid, ablations, base):
            status = read_status(f"{args.out}/{point.name}")
            print(f"{args.out}/{point.name}  {status['status'] if status else 'to run'}")
        return 0

    def report(kind: str, name: str, info) -> None:
        if kind == "skip":
            print(f"[sweep] {name}: already {info['status']}, skipped", flush=True)
        elif kind == "start":
            print(f"[sweep] {name}: training on {info}", flush=True)
        else:
            summary = info.get("summary") or {}
            val = summary.get("val_loss")
            detail = f"val_loss {val:.4f}" if isinstance(val, float) else info.get("error", "")
            print(f"[sweep] {name}: {info['status']} {detail}", flush=True)

    results = run_sweep(base, grid, ablations, args.out, devices=devices, on_event=report)
    counts: dict[str, int] = {}
    for status in results.values():
        counts[status["status"]] = counts.get(status["status"], 0) + 1
    print(
        "[sweep] " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"; compare with: "
        f"cs336-basics compare {args.out}"
    )
    return 0 if set(counts) <= {"finished", "diverged"} else 1
