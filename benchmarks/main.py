"""The command line: pick the scenarios, run them, write and print the results."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.harness import APIS, FULL, QUICK, Bench, Run, ScenarioResult, Sizes
from benchmarks.scenarios import SCENARIOS

__all__ = ["main"]

HERE = Path(__file__).resolve().parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the engine's benchmark scenarios against the simulator.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller inputs, one repetition (about 3 minutes)"
    )
    parser.add_argument(
        "--api",
        nargs="+",
        choices=list(APIS),
        metavar="API",
        help="run the scenarios on these APIs only (default: v1 and v3, side by side)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"run only these scenarios (and what they measure against): {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--reps", type=int, help="repetitions per figure (default 3, quick 1)")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: rebuild the tables, plots and README block from a results.json",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="results folder (default benchmarks/results for a full run, "
        "benchmarks/results/partial otherwise)",
    )
    return parser


def _snapshot(code: Path) -> dict[str, str]:
    """Copy `engine` and `benchmarks` to `code`; return the engine's content hash.

    Every process of the run imports this copy, so the figures come from one version of
    the engine even if the work tree is edited meanwhile.
    """
    digest = hashlib.sha256()
    root = HERE.parent
    for package in ("engine", "benchmarks"):
        skip = shutil.ignore_patterns("__pycache__", "results", "*.pyc")
        shutil.copytree(root / package, code / package, ignore=skip)
    for path in sorted((code / "engine").rglob("*.py")):
        digest.update(path.relative_to(code).as_posix().encode() + b"\0" + path.read_bytes())
    return {"engine_sha256": digest.hexdigest()[:16], "taken": dt.datetime.now(dt.UTC).isoformat()}


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the harness; the exit status is 0 even when targets are missed (they are reported)."""
    args = _parser().parse_args(argv)
    if args.render:
        return _render(args.render, args.out or args.render.parent)
    sizes = QUICK if args.quick else FULL
    if args.reps:
        sizes = dataclasses.replace(sizes, reps=args.reps)
    chosen = args.only or [k for k in SCENARIOS if k != "profile" or sizes.profile]
    apis = tuple(a for a in APIS if a in (args.api or APIS))
    complete = not args.quick and not args.only and args.reps is None and apis == APIS
    out: Path = args.out or (HERE / "results" if complete else HERE / "results" / "partial")
    out.mkdir(parents=True, exist_ok=True)
    if not complete and args.out is None:
        (out / ".gitignore").write_text("*\n")  # partial runs are not for committing
    meta = report.machine()
    meta["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta["mode"] = "quick" if args.quick else "full"
    meta["reps"] = sizes.reps
    meta["scenarios"] = chosen
    meta["apis"] = list(apis)
    meta["complete"] = complete
    meta["sizes"] = dataclasses.asdict(sizes)
    started = time.monotonic()
    results: list[ScenarioResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        code = Path(tmp) / "code"
        meta["snapshot"] = _snapshot(code)
        bench = Bench(sizes, Path(tmp), _log, code)
        bench.apis = apis
        for key in chosen:
            _log(f"--- {key}")
            try:
                results.append(SCENARIOS[key](bench))
            except Exception:  # one broken scenario must not lose the others' figures
                _log(traceback.format_exc())
                failed = ScenarioResult(key, f"{key} (FAILED)")
                failed.notes.append(f"The scenario failed: {traceback.format_exc(limit=1)}")
                results.append(failed)
        meta["wall_s"] = time.monotonic() - started
        end = report.machine()
        meta["load_average_end"] = end["load_average"]
        meta["git_end"] = end["git"]
        runs = bench.runs
    _write(out, meta, results, runs, readme=complete)
    broken = [r.title for r in results if r.title.endswith("(FAILED)")]
    if broken:  # the figures of the others are written; the run still says it failed
        _log(f"{len(broken)} scenario(s) failed: {', '.join(broken)}")
        return 1
    return 0


def _write(
    out: Path,
    meta: dict[str, Any],
    results: list[ScenarioResult],
    runs: list[Run],
    *,
    readme: bool,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plots = report.plot(out, results)
    report.write_json(out / "results.json", meta, results, runs)
    (out / "results.md").write_text(report.markdown(meta, results, plots), encoding="utf-8")
    if readme:
        report.update_readme(HERE / "README.md", meta, results, plots)
    print(report.markdown(meta, results, []))
    print(f"\nWall time {meta['wall_s'] / 60:.1f} min; results in {out}.")


def _render(path: Path, out: Path) -> int:
    """Rebuild every output from the raw runs of a results.json, measuring nothing."""
    document = json.loads(path.read_text(encoding="utf-8"))
    meta = document["meta"]
    known = {f.name for f in dataclasses.fields(Sizes)}
    given = {k: v for k, v in meta["sizes"].items() if k in known}
    sizes = Sizes(
        **{
            **given,
            "latency": {int(c): n for c, n in given["latency"].items()},
            "rates": tuple(given["rates"]),
            "bulk": tuple(given["bulk"]),
            **({"bulk_v3": tuple(given["bulk_v3"])} if "bulk_v3" in given else {}),
        }
    )
    runs = [Run.from_json(record) for record in document["runs"]]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        bench = Bench(sizes, Path(tmp), _log)
        bench.preload(runs)
        meta.setdefault("apis", list(bench.apis))
        results = [SCENARIOS[key](bench) for key in meta["scenarios"]]
    readme = meta.get("complete", False) and out.resolve() == (HERE / "results").resolve()
    _write(out, meta, results, runs, readme=readme)
    return 0
