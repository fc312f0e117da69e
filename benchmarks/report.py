"""The outputs: results.json (raw), results.md (tables), PNG plots, and the README block."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.harness import Figure, Run, ScenarioResult
from benchmarks.scenarios import API_NAMES, fmt

__all__ = ["machine", "markdown", "plot", "summary_table", "update_readme", "write_json"]

README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with open("/proc/meminfo") as file:
        for line in file:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    return 0.0


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except OSError:
        return ""
    return done.stdout.strip()


def machine() -> dict[str, Any]:
    """The machine, the versions and the source tree the figures come from."""
    dirty = [line[3:] for line in _git("status", "--porcelain", "engine").splitlines() if line]
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(_memory_gib(), 1),
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
        "versions": {
            "python": platform.python_version(),
            "engine": _version("ctct-migration-engine"),
            "aiohttp": _version("aiohttp"),
            "anyio": _version("anyio"),
            "uvloop": _version("uvloop"),
            "tenacity": _version("tenacity"),
            "xmltodict": _version("xmltodict"),
            "matplotlib": _version("matplotlib"),
        },
        # The engine's files that differ from the commit (the benchmarks' own do not count).
        "git": {"commit": _git("rev-parse", "--short", "HEAD"), "uncommitted": dirty},
    }


def write_json(
    path: Path, meta: dict[str, Any], scenarios: Sequence[ScenarioResult], runs: Sequence[Run]
) -> None:
    """Everything: the meta data, every scenario's figures and tables, every raw run."""
    document = {
        "meta": meta,
        "scenarios": [
            {
                "key": s.key,
                "title": s.title,
                "figures": [asdict(f) for f in s.figures],
                "tables": [asdict(t) for t in s.tables],
                "notes": s.notes,
                "data": s.data,
            }
            for s in scenarios
        ],
        "runs": [run.as_json() for run in runs],
    }
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _met(figure: Figure) -> str:
    if figure.met is None:
        return ""
    return "met" if figure.met else "**not met**"


def _value(figure: Figure) -> str:
    """The median, with the min–max of its repetitions when there are several."""
    if figure.reps > 1:
        return f"{fmt(figure.median)} ({fmt(figure.low)}–{fmt(figure.high)})"
    return fmt(figure.median)


def summary_table(scenarios: Sequence[ScenarioResult], *, targets_only: bool = False) -> str:
    """One Markdown table of every figure (or only those held to a target): a row per
    figure, and for figures measured on each API (tagged with it) a column per API, side
    by side: the median (min–max of the repetitions), the target, met or not."""
    figures = [f for s in scenarios for f in s.figures]
    apis = [a for a in API_NAMES if any(f.api == a for f in figures)]
    if not apis:
        return _single_table(scenarios, targets_only=targets_only)
    head = "| scenario | figure | unit |"
    rule = "| --- | --- | --- |"
    for api in apis:
        head += f" {API_NAMES[api]} | {API_NAMES[api]} target | |"
        rule += " --- | --- | --- |"
    lines = [head, rule]
    for scenario in scenarios:
        by_name: dict[str, dict[str, Figure]] = {}
        order: list[str] = []
        after: dict[str, int] = {}  # per API: where its last figure's row is
        for f in scenario.figures:
            api = f.api or apis[0]
            if f.name not in by_name:
                # A figure one API alone has goes after that API's previous one.
                order.insert(after.get(api, len(order) - 1) + 1, f.name)
            by_name.setdefault(f.name, {})[api] = f
            after[api] = order.index(f.name)
        for name in order:
            row = by_name[name]
            if targets_only and not any(f.target for f in row.values()):
                continue
            unit = next(iter(row.values())).unit
            line = f"| {scenario.title.split('.')[0]} | {name} | {unit} |"
            for api in apis:
                cell = row.get(api)
                line += (
                    " — | | |"
                    if cell is None
                    else f" {_value(cell)} | {cell.target} | {_met(cell)} |"
                )
            lines.append(line)
    return "\n".join(lines)


def _single_table(scenarios: Sequence[ScenarioResult], *, targets_only: bool) -> str:
    """The table of figures of a results file from before the figures had an API."""
    lines = [
        "| scenario | figure | median | min–max | unit | target | |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario in scenarios:
        for f in scenario.figures:
            if targets_only and not f.target:
                continue
            spread = f"{fmt(f.low)}–{fmt(f.high)}" if f.reps > 1 else "(1 run)"
            lines.append(
                f"| {scenario.title.split('.')[0]} | {f.name} | {fmt(f.median)} | {spread} | "
                f"{f.unit} | {f.target} | {_met(f)} |"
            )
    return "\n".join(lines)


def _meta_lines(meta: dict[str, Any]) -> list[str]:
    v = meta["versions"]
    git = meta["git"]
    dirty = f" + {len(git['uncommitted'])} uncommitted files" if git["uncommitted"] else ""
    load = ", ".join(f"{x:.2f}" for x in meta["load_average"])
    end = ", ".join(f"{x:.2f}" for x in meta.get("load_average_end", ()))
    changed = meta.get("git_end", git) != git
    apis = ", ".join(API_NAMES.get(a, a) for a in meta.get("apis", ["v1"]))
    return [
        f"- Date: {meta['date']}; harness wall time {meta['wall_s'] / 60:.1f} min "
        f"({meta['mode']}, {meta['reps']} repetition(s) per figure; APIs: {apis}).",
        f"- Machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']} GiB, Linux "
        f"{meta['kernel']}; load average (1, 5, 15 min) {load} at the start, {end} at the end "
        "(the machine is shared).",
        f"- Versions: Python {v['python']}, engine {v['engine']} (git {git['commit']}{dirty}; "
        f"every process ran a snapshot of it, sha256 {meta['snapshot']['engine_sha256']}…), "
        f"aiohttp {v['aiohttp']}, anyio {v['anyio']}, uvloop {v['uvloop']}, tenacity "
        f"{v['tenacity']}, xmltodict {v['xmltodict']}.",
        *(
            ["- **The source tree changed during the run** (see `git_end` in results.json)."]
            if changed
            else []
        ),
    ]


def markdown(
    meta: dict[str, Any], scenarios: Sequence[ScenarioResult], plots: Sequence[str]
) -> str:
    """results.md: the meta data, the targets, every scenario's figures and tables."""
    out = ["# Benchmark results", "", *_meta_lines(meta), ""]
    out += ["## Targets", "", summary_table(scenarios, targets_only=True), ""]
    for scenario in scenarios:
        out += [f"## {scenario.title}", ""]
        if scenario.figures:
            out += [summary_table([scenario]), ""]
        for table in scenario.tables:
            out += [table.markdown(), ""]
        out += [*scenario.notes, ""]
    if plots:
        out += ["## Plots", ""]
        out += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
        out.append("")
    return "\n".join(out)


def update_readme(
    readme: Path, meta: dict[str, Any], scenarios: Sequence[ScenarioResult], plots: Sequence[str]
) -> bool:
    """Replace the README's results block (between its markers); False if it has none."""
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    block = [README_START, "", *_meta_lines(meta), ""]
    block += [summary_table(scenarios, targets_only=True), ""]
    for scenario in scenarios:
        for table in scenario.tables:
            if scenario.key in ("per-contact", "bulk", "naive", "budget", "mixed"):
                block += [table.markdown(), ""]
    block += ["Plots: " + ", ".join(f"[{Path(p).stem}](results/{Path(p).name})" for p in plots)]
    block += ["", README_END]
    readme.write_text(head + "\n".join(block) + tail, encoding="utf-8")
    return True


def plot(folder: Path, scenarios: Sequence[ScenarioResult]) -> list[str]:
    """Draw a PNG per scenario that has plot data; return their paths."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    from benchmarks import plots

    by_key = {s.key: s for s in scenarios}
    written = []
    for key, draw in plots.PLOTS.items():
        if key in by_key and by_key[key].data:
            path = folder / f"{key}.png"
            draw(by_key[key].data, path)
            written.append(str(path))
    return written
