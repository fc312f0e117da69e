"""The PNG plots (matplotlib, Agg backend), one per scenario that has something to draw."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

__all__ = ["PLOTS"]


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _errors(values: list[float]) -> tuple[float, list[float]]:
    mid = statistics.median(values)
    return mid, [mid - min(values), max(values) - mid]


def per_contact(data: dict[str, Any], path: Path) -> None:
    """Engine vs ceiling contacts/s per kind of contact and API (median, min–max bars)."""
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(data)), 4.5))
    kinds = list(data)
    for offset, who, color in ((-0.2, "ceiling", "#999999"), (0.2, "engine", "#1f77b4")):
        mids: list[float] = []
        errs: list[list[float]] = [[], []]
        for kind in kinds:
            mid, (low, high) = _errors(data[kind][who])
            mids.append(mid)
            errs[0].append(low)
            errs[1].append(high)
        xs = [i + offset for i in range(len(kinds))]
        ax.bar(xs, mids, 0.4, yerr=errs, capsize=4, label=who, color=color)
    ax.axhline(2000, color="#d62728", linestyle="--", linewidth=1, label="target 2,000/s")
    ax.set_xticks(range(len(kinds)), kinds, fontsize=8)
    ax.set_ylabel("contacts/s")
    ax.set_title("Per-contact path, no latency: engine vs bare aiohttp loop")
    ax.legend()
    _save(fig, path)


def latency(data: dict[str, Any], path: Path) -> None:
    """Contacts/s against concurrency at 100 ms, with the bound C / (rpc × latency), per API."""
    by_api = data.get("by_api") or {"": data["points"]}
    fig, ax = plt.subplots(figsize=(7, 4))
    cs: list[int] = []
    for (api, points), color in zip(by_api.items(), ("#1f77b4", "#ff7f0e"), strict=False):
        cs = [p["concurrency"] for p in points]
        ax.plot(
            cs, [p["bound"] for p in points], "--", color=color, alpha=0.5, label=f"{api} bound"
        )
        ax.errorbar(
            cs,
            [p["median"] for p in points],
            yerr=[
                [p["median"] - p["low"] for p in points],
                [p["high"] - p["median"] for p in points],
            ],
            fmt="o-",
            color=color,
            capsize=4,
            label=f"{api} engine".strip(),
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(cs, [str(c) for c in cs])
    ax.set_xlabel("concurrency")
    ax.set_ylabel("contacts/s")
    ax.set_title("Per-contact path, 100 ms latency")
    ax.legend()
    _save(fig, path)


def rate(data: dict[str, Any], path: Path) -> None:
    """Achieved request rate as a fraction of the simulator's limit."""
    points = data["points"]
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(points)), 4.5))
    names = [p["name"] for p in points]
    ax.tick_params(axis="x", labelsize=8)
    ax.bar(
        names,
        [p["median"] for p in points],
        yerr=[
            [p["median"] - p["low"] for p in points],
            [p["high"] - p["median"] for p in points],
        ],
        capsize=4,
        color="#1f77b4",
    )
    ax.axhline(0.95, color="#d62728", linestyle="--", linewidth=1, label="target 0.95")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("achieved rate / limit")
    ax.set_title("Rate-limited simulator")
    ax.legend()
    _save(fig, path)


def _timelines(ax: Any, timelines: dict[str, list[list[float]]], column: int, label: str) -> None:
    for name, points in timelines.items():
        if points:
            ax.plot([p[0] for p in points], [p[column] for p in points], label=name)
    ax.set_xlabel("seconds")
    ax.set_ylabel(label)
    ax.legend()


def bulk(data: dict[str, Any], path: Path) -> None:
    """Rows done and resident memory over a bulk run (first repetition)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    _timelines(left, data["timelines"], 1, "rows done")
    _timelines(right, data["timelines"], 2, "engine RSS (MB)")
    left.set_title("Bulk path: progress")
    right.set_title("Bulk path: memory")
    _save(fig, path)


def memory(data: dict[str, Any], path: Path) -> None:
    """Peak RSS per path and size, and RSS over the larger runs."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.5))
    peaks = data["peaks"]
    left.tick_params(axis="x", labelsize=7)
    left.bar(
        [p["name"] for p in peaks],
        [p["median"] for p in peaks],
        yerr=[[p["median"] - p["low"] for p in peaks], [p["high"] - p["median"] for p in peaks]],
        capsize=4,
        color="#1f77b4",
    )
    left.axhline(200, color="#d62728", linestyle="--", linewidth=1, label="target 200 MB")
    left.set_ylabel("peak RSS (MB)")
    left.set_title("Engine peak memory")
    left.legend()
    for name, points in data["timelines"].items():
        if points:
            right.plot([p[1] for p in points], [p[2] for p in points], label=name)
    right.set_xlabel("rows done")
    right.set_ylabel("RSS (MB)")
    right.set_title("RSS during the larger runs")
    right.legend()
    _save(fig, path)


def budget(data: dict[str, Any], path: Path) -> None:
    """Days to migrate 1,000,000 contacts at 10,000 requests/day, per strategy."""
    points = data["points"]
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(points)), 5))
    ax.tick_params(axis="x", labelsize=7)
    names = [textwrap.fill(p["name"].replace("`", ""), 20) for p in points]
    colors = ["#ff7f0e" if p["name"].startswith("V3") else "#1f77b4" for p in points]
    bars = ax.bar(names, [p["days"] for p in points], color=colors)
    ax.bar_label(bars, [f"{p['days']:,} d" for p in points])
    ax.set_yscale("log")
    ax.set_ylabel("days at 10,000 requests/day")
    ax.set_title("1,000,000 contacts, 70% existing")
    _save(fig, path)


#: Scenario key -> its plot.
PLOTS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "per-contact": per_contact,
    "latency": latency,
    "rate": rate,
    "bulk": bulk,
    "memory": memory,
    "budget": budget,
}
