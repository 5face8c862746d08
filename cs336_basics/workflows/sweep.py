"""Sweeps: many training runs from one base config, one run directory per point, restartable.

    cs336-basics sweep --config base.toml --grid lr=1e-3,3e-3,1e-2 --grid batch_size=64,128 --out sweeps/lr
    cs336-basics sweep --config base.toml --ablations norm=none,post positions=none ffn=silu --out sweeps/abl

Points: the grid is the cartesian product of its axes (no grid: the base itself); ablations are one-factor-at-a-
time variants of every grid point (each `key=value` changes one setting and keeps the others). A point's run
directory is named by its settings, `lr=0.003,batch_size=64` (the base is `base`), so a restarted sweep finds it.

Restart rules, per run directory: `sweep_status.json` says `finished` or `diverged` -> skipped; otherwise it is
(re)started with resume, which continues from its newest checkpoint when it has one. A run whose loss turns NaN or
inf (the trainer's `NonFiniteLossError`) is recorded as `diverged` and the sweep goes on; any other error in a run is
recorded as `failed` (with its message) and the sweep goes on, and a restart tries that run again.

Devices: runs go one after another in this process on the base config's device, or, given several devices, in one
worker process per device (spawned), each taking the next waiting point.

Sweep directory: `sweep.json` (the base settings, the grid, the ablations and the points) and one run directory per
point (what `train` writes, plus `sweep_status.json`). A sweep directory holding a different base refuses to run.
"""

import dataclasses
import itertools
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cs336_basics.fileio import atomic_write_json

STATUS_FILE = "sweep_status.json"
SWEEP_FILE = "sweep.json"
BASE_NAME = "base"
# Other spellings accepted for grid keys; everything else must be a TrainConfig field name.
KEY_ALIASES = {"learning_rate": "lr", "max_lr": "lr", "steps_total": "steps"}
# Settings a sweep manages itself: not grid or ablation keys.
RESERVED_KEYS = ("out", "resume", "stop_at_step", "wandb_run_name")


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its directory name and the settings it changes from the base (in flag order)."""

    name: str
    overrides: tuple[tuple[str, Any], ...]

    def settings(self) -> dict[str, Any]:
        return dict(self.overrides)


def _field_types() -> dict[str, Any]:
    from cs336_basics.train_config import TrainConfig

    return {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def parse_value(key: str, text: str, kind: Any) -> Any:
    """`text` as the TrainConfig field `key` of type `kind`: int, float, bool, str, a Literal of strings (one of its
    values) or `X | None` ("none" -> None)."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if type(None) in options and text.strip().lower() in ("none", "null"):
        return None
    for option in options:
        if option is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
        elif option in (int, float):
            try:
                return option(text)
            except ValueError:
                if option is int:
                    try:  # "1e4" for an int field
                        value = float(text)
                    except ValueError:
                        continue
                    if value.is_integer():
                        return int(value)
        elif option is str:
            return text
        elif typing.get_origin(option) is typing.Literal:
            if text in typing.get_args(option):
                return text
            raise ValueError(f"{key}={text!r} must be one of {typing.get_args(option)}")
    raise ValueError(f"{key}={text!r}: not a valid value for a setting of type {kind}")


def parse_axes(specs: list[str], what: str = "--grid") -> list[tuple[str, list[Any]]]:
    """["lr=1e-3,3e-3", "batch_size=64"] -> [("lr", [0.001, 0.003]), ("batch_size", [64])], typed and checked.

    Keys are TrainConfig field names (kebab case and the aliases in KEY_ALIASES accepted); each key at most once.
    """
    known = _field_types()
    axes: list[tuple[str, list[Any]]] = []
    for spec in specs:
        key, sep, values_text = spec.partition("=")
        name = key.strip().replace("-", "_")
        name = KEY_ALIASES.get(name, name)
        if not sep or not name or not values_text.strip():
            raise ValueError(f"{what} {spec!r} must look like key=value1,value2 (e.g. lr=1e-3,3e-3)")
        if name not in known:
            raise ValueError(f"{what} {spec!r}: unknown setting {key!r}; use a train setting name such as lr, d_model")
        if name in RESERVED_KEYS:
            raise ValueError(f"{what} {spec!r}: {name} is managed by the sweep and cannot be varied")
        if name in dict(axes):
            raise ValueError(f"{what} {spec!r}: {name} is given twice; list all its values in one {what}")
        values = [parse_value(name, v.strip(), known[name]) for v in values_text.split(",")]
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"{what} {spec!r}: a value is repeated")
        axes.append((name, values))
    return axes


def _format_value(value: Any) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    return text.replace(os.sep, "_")


def point_name(overrides: tuple[tuple[str, Any], ...]) -> str:
    """The run directory name of a point: "lr=0.003,batch_size=64"; "base" when nothing changes."""
    return ",".join(f"{k}={_format_value(v)}" for k, v in overrides) or BASE_NAME


def expand_points(
    grid: list[tuple[str, list[Any]]], ablations: list[tuple[str, list[Any]]], base: dict[str, Any]
) -> list[SweepPoint]:
    """Every grid point (cartesian product; none: the base), then each ablation value applied to each grid point.

    An ablation value equal to the point's own setting adds nothing (it is that point). Names are unique.
    """
    names = [name for name, _ in grid]
    grid_points = [tuple(zip(names, combo, strict=True)) for combo in itertools.product(*(v for _, v in grid))]
    points: dict[str, SweepPoint] = {}
    for overrides in grid_points:
        points.setdefault(point_name(overrides), SweepPoint(point_name(overrides), overrides))
    for overrides in grid_points:
        current = {**base, **dict(overrides)}
        for key, values in ablations:
            for value in values:
                if key in current and current[key] == value:
                    continue
                changed = tuple((k, v) for k, v in overrides if k != key) + ((key, value),)
                points.setdefault(point_name(changed), SweepPoint(point_name(changed), changed))
    return list(points.values())


def point_config(base: dict[str, Any], point: SweepPoint, sweep_dir: str | os.PathLike, device: str | None = None):
    """The TrainConfig of one point: base settings, the point's overrides, out = SWEEP_DIR/NAME, resume on."""
    from cs336_basics.train_config import TrainConfig

    values = {**base, **point.settings(), "out": str(Path(sweep_dir) / point.name), "resume": True}
    values["progress"] = False
    if device is not None:
        values["device"] = device
    return TrainConfig(**values)


def read_status(run_dir: str | os.PathLike) -> dict | None:
    """The run's sweep_status.json ({"status": finished | diverged | failed, ...}), or None if it has none."""
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _write_status(run_dir: Path, status: str, **extra) -> dict:
    record = {"status": status, **extra}
    atomic_write_json(run_dir / STATUS_FILE, record)
    return record


def run_point(config) -> dict:
    """Train one point (resuming it if it has checkpoints); record and return its status dict.

    status is "finished" (with the trainer's summary), "diverged" (NaN/inf loss: the error message) or "failed"
    (any other exception: its type and message). KeyboardInterrupt is not caught: the run stays resumable.
    """
    from cs336_basics.train import NonFiniteLossError, train

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        summary = train(config)
    except NonFiniteLossError as e:
        return _write_status(out, "diverged", error=str(e))
    except Exception as e:  # one broken run must not stop the sweep; a restart retries it
        return _write_status(out, "failed", error=f"{type(e).__name__}: {e}")
    if summary.get("stopped_early"):  # a stop_at_step in the base: not done yet
        return {"status": "stopped", "summary": summary}
    return _write_status(out, "finished", summary=summary)


def _prepare_sweep_dir(sweep_dir: Path, base: dict, grid, ablations, points: list[SweepPoint]) -> None:
    """Write sweep.json; refuse a directory that holds a sweep over a different base."""
    path = sweep_dir / SWEEP_FILE
    known_points: dict[str, Any] = {}
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("base") != json.loads(json.dumps(base)):
            diff = sorted(k for k in set(saved.get("base", {})) | set(base) if saved["base"].get(k) != base.get(k))
            raise ValueError(
                f"out={str(sweep_dir)!r} holds a sweep over a different base config (differs in {diff}); "
                "choose a new --out or restore the base settings"
            )
        known_points = {p["name"]: p for p in saved.get("points", [])}
    for point in points:
        known_points[point.name] = {"name": point.name, "settings": point.settings()}
    record = {
        "base": base,
        "grid": [[k, v] for k, v in grid],
        "ablations": [[k, v] for k, v in ablations],
        "points": list(known_points.values()),
    }
    atomic_write_json(path, record)


def run_sweep(
    base: dict[str, Any],
    grid: list[tuple[str, list[Any]]],
    ablations: list[tuple[str, list[Any]]],
    sweep_dir: str | os.PathLike,
    devices: list[str] | None = None,
    on_event=None,
) -> dict[str, dict]:
    """Run every point of the sweep (see the module docstring); return {point name: status dict}.

    `base` holds TrainConfig settings (train, val and a length at least). Every point's config is validated before
    any run starts. `devices`: None or one device = runs one after another in this process (on that device, or on
    the base's); several = one spawned worker process per device. `on_event(kind, name, info)` is called with
    kind "skip" (info: the recorded status), "start" (info: the device) and "done" (info: the status dict).
    """
    from cs336_basics.train_config import validate_config

    on_event = on_event or (lambda *a: None)
    sweep_dir = Path(sweep_dir)
    points = expand_points(grid, ablations, base)
    configs = {p.name: point_config(base, p, sweep_dir) for p in points}
    for config in configs.values():
        validate_config(config)
    if devices:
        from cs336_basics.runtime import resolve_device

        for device in devices:
            resolve_device(device)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _prepare_sweep_dir(sweep_dir, base, grid, ablations, points)

    results: dict[str, dict] = {}
    todo = []
    for point in points:
        status = read_status(sweep_dir / point.name)
        if status is not None and status["status"] in ("finished", "diverged"):
            results[point.name] = status
            on_event("skip", point.name, status)
        else:
            todo.append(point)
    if devices is None or len(devices) <= 1:
        device = devices[0] if devices else None
        for point in todo:
            config = point_config(base, point, sweep_dir, device)
            on_event("start", point.name, config.device)
            results[point.name] = run_point(config)
            on_event("done", point.name, results[point.name])
    else:
        results.update(_run_parallel(base, todo, sweep_dir, devices, on_event))
    return {p.name: results.get(p.name, {"status": "not run"}) for p in points}


def _worker(base, points, sweep_dir, device, num_workers, tasks, events) -> None:
    """A spawned worker: take point indices from `tasks` until its stop sign (None); report start/done on `events`."""
    if device == "cpu":  # CPU workers share the cores instead of oversubscribing them
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_workers))
    while (index := tasks.get()) is not None:
        config = point_config(base, points[index], sweep_dir, device)
        events.put(("start", index, device))
        events.put(("done", index, run_point(config)))


def _run_parallel(base, points: list[SweepPoint], sweep_dir: Path, devices: list[str], on_event) -> dict[str, dict]:
    """One spawned process per device, each running waiting points until none are left."""
    import multiprocessing
    import queue

    context = multiprocessing.get_context("spawn")  # fresh CUDA state in each worker
    tasks, events = context.Queue(), context.Queue()
    for index in range(len(points)):
        tasks.put(index)
    for _ in devices:
        tasks.put(None)  # one stop sign per worker
    devices = devices[: len(points)]
    workers = [
        context.Process(
            target=_worker, args=(base, points, str(sweep_dir), device, len(devices), tasks, events), daemon=True
        )
        for device in devices
    ]
    for worker in workers:
        worker.start()
    results: dict[str, dict] = {}
    running: dict[int, str] = {}
    try:
        while len(results) < len(points):
            try:
                kind, index, info = events.get(timeout=1.0)
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    break
                continue
            name = points[index].name
            if kind == "start":
                running[index] = info
            else:
                running.pop(index, None)
                results[name] = info
            on_event(kind, name, info)
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
    for index, device in running.items():  # its worker died mid-run (killed, out of memory): resumable later
        name = points[index].name
        results[name] = _write_status(sweep_dir / name, "failed", error=f"the worker process on {device} died")
        on_event("done", name, results[name])
    return results
