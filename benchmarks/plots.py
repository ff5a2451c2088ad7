"""PNG plots of a ``run_all.py`` run (matplotlib, drawn without pyplot's global state).

- ``timeline_<loop>.png``: admissions over time against the limit line, one panel per
  limiter (saturation, one task count);
- ``latency_<loop>.png``: wait-latency distributions (CDF), one panel per task count;
- ``cpu.png``: CPU per 1,000 admissions against the number of waiting tasks (log x);
- ``waiters.png``: waiter scaling: wall / ideal, CPU per waiter and peak memory.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from collections.abc import Callable

    from matplotlib.artist import Artist
    from matplotlib.axes import Axes

    from run_all import Config, Results, Series, WaitersRow

PALETTE = [
    "#1f77b4",  # tokenbucket first: blue
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
LIMIT_COLOUR = "#d62728"
DPI = 110


def _colours(names: list[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _save(fig: Figure, out: str, name: str) -> str:
    fig.savefig(os.path.join(out, name), dpi=DPI)
    return name


def _grid(count: int, columns: int) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def timeline(results: Results, series: Series, cfg: Config, out: str, loop: str) -> str | None:
    """Cumulative admissions since the first call, against burst + rate * t."""
    tasks = 1_000 if 1_000 in cfg.tasks else max(cfg.tasks)
    rows = [
        r
        for r in results.saturation
        if r.result.loop == loop
        and r.result.tasks == tasks
        and (loop, r.result.name, tasks) in series.timelines
    ]
    if not rows:
        return None
    colours = _colours(list(dict.fromkeys(r.result.name for r in results.saturation)))
    nrows, ncols = _grid(len(rows), 4)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    end = cfg.warmup + cfg.duration
    for index, row in enumerate(rows):
        ax: Axes = axes[index // ncols][index % ncols]
        times = series.timelines[(loop, row.result.name, tasks)]
        counts = list(range(1, len(times) + 1))
        ax.step(
            times,
            counts,
            where="post",
            color=colours[row.result.name],
            linewidth=1.2,
            label="admitted",
        )
        ax.plot(
            [0.0, end],
            [cfg.saturation_capacity, cfg.saturation_capacity + cfg.saturation_rate * end],
            color=LIMIT_COLOUR,
            linestyle="--",
            linewidth=1.0,
            label="burst + rate x t",
        )
        ax.set_xlim(0.0, end)
        ax.set_ylim(
            0.0, max(cfg.saturation_capacity + cfg.saturation_rate * end, len(times)) * 1.05
        )
        title = f"{row.result.name}\npeak {row.result.peak:,} / {row.result.allowed:,.0f}"
        if row.over:
            title += "  OVER"
        ax.set_title(title, fontsize=9, color=LIMIT_COLOUR if row.over else "black")
        ax.set_xlabel("seconds since the first call", fontsize=8)
        ax.set_ylabel("admissions (cumulative)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if index == 0:
            ax.legend(fontsize=7, loc="upper left")
    for index in range(len(rows), nrows * ncols):
        axes[index // ncols][index % ncols].set_visible(False)
    fig.suptitle(
        f"Saturation on {loop}: {tasks:,} tasks, {cfg.saturation_rate:,.0f}/s, burst "
        f"{cfg.saturation_capacity:g} (peak: most admissions in any "
        f"{min(cfg.window, cfg.duration):g} s window)",
        fontsize=10,
    )
    return _save(fig, out, f"timeline_{loop}.png")


def latency(results: Results, series: Series, cfg: Config, out: str, loop: str) -> str | None:
    """Empirical CDF of the wait latencies, one panel per task count."""
    counts = [
        n for n in cfg.tasks if any(key[0] == loop and key[2] == n for key in series.latencies)
    ]
    if not counts:
        return None
    names = list(dict.fromkeys(r.result.name for r in results.saturation))
    colours = _colours(names)
    nrows, ncols = _grid(len(counts), 4)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for index, tasks in enumerate(counts):
        ax: Axes = axes[index // ncols][index % ncols]
        for name in names:
            waits = series.latencies.get((loop, name, tasks))
            if not waits:
                continue
            ordered = sorted(max(w * 1e3, 1e-3) for w in waits)
            share = [(i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(ordered, share, where="post", color=colours[name], linewidth=1.1, label=name)
        ideal = tasks / cfg.saturation_rate * 1e3
        ax.axvline(ideal, color=LIMIT_COLOUR, linestyle=":", linewidth=1.0)
        ax.set_xscale("log")
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"{tasks:,} tasks (dotted: tasks / rate = {ideal:,.0f} ms)", fontsize=9)
        ax.set_xlabel("wait, ms (log)", fontsize=8)
        ax.set_ylabel("share of grants", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    for index in range(len(counts), nrows * ncols):
        axes[index // ncols][index % ncols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8)
    fig.suptitle(
        f"Wait latency under saturation on {loop} (CDF over the grants of the measured interval)",
        fontsize=10,
    )
    return _save(fig, out, f"latency_{loop}.png")


def _shown(loops: list[str], cfg: Config) -> list[str]:
    """--quick draws each kind of plot once, for the first loop: matplotlib is slow."""
    return loops[:1] if cfg.mode == "quick" else loops


def cpu(results: Results, cfg: Config, out: str) -> str | None:
    """CPU ms per 1,000 admissions against the number of waiting tasks, per loop."""
    loops = _shown(list(dict.fromkeys(r.result.loop for r in results.saturation)), cfg)
    if not loops:
        return None
    names = list(dict.fromkeys(r.result.name for r in results.saturation))
    colours = _colours(names)
    fig = Figure(figsize=(5.0 * len(loops), 4.2), layout="constrained")
    axes = fig.subplots(1, len(loops), squeeze=False)[0]
    for ax, loop in zip(axes, loops, strict=True):
        for name in names:
            points = sorted(
                (r.result.tasks, r.result.cpu_ms_per_1k)
                for r in results.saturation
                if r.result.loop == loop and r.result.name == name
            )
            if points:
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    marker="o",
                    color=colours[name],
                    linewidth=1.3,
                    markersize=4,
                    label=name,
                )
        floor = results.loop_floor.get(loop)
        if floor:
            ax.axhline(
                floor * 1e6,
                color="black",
                linestyle=":",
                linewidth=1.0,
                label="event-loop floor (1 wake-up / adm)",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(loop, fontsize=10)
        ax.set_xlabel("waiting tasks (log)", fontsize=8)
        ax.set_ylabel("CPU ms per 1,000 admissions (log)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    handles: list[Artist] = []
    labels: list[str] = []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8)
    fig.suptitle(
        f"Saturation: CPU per admission against waiters "
        f"({cfg.saturation_rate:,.0f}/s, burst {cfg.saturation_capacity:g})",
        fontsize=10,
    )
    return _save(fig, out, "cpu.png")


def waiters(results: Results, cfg: Config, out: str) -> str | None:
    """Waiter scaling per loop: wall / ideal, CPU per waiter, peak memory."""
    loops = _shown(list(dict.fromkeys(r.loop for r in results.waiters)), cfg)
    if not loops:
        return None
    names = list(dict.fromkeys(r.name for r in results.waiters))
    colours = _colours(names)
    fig = Figure(figsize=(4.6 * len(loops), 9.0), layout="constrained")
    axes = fig.subplots(3, len(loops), squeeze=False)
    metrics: list[tuple[str, Callable[[WaitersRow], float]]] = [
        ("wall / ideal (ideal >= 0.1 s)", lambda r: r.ratio if r.ideal >= 0.1 else math.nan),
        ("CPU us per waiter (log)", lambda r: r.cpu_us_per_waiter),
        (
            "peak memory, MiB (log)",
            lambda r: math.nan if r.memory_bytes is None else max(r.memory_bytes, 1) / 2**20,
        ),
    ]
    for column, loop in enumerate(loops):
        for line, (label, value) in enumerate(metrics):
            ax: Axes = axes[line][column]
            for name in names:
                points = sorted(
                    (r.waiters, value(r))
                    for r in results.waiters
                    if r.loop == loop and r.name == name and not math.isnan(value(r))
                )
                if points:
                    ax.plot(
                        [p[0] for p in points],
                        [p[1] for p in points],
                        marker="o",
                        color=colours[name],
                        linewidth=1.3,
                        markersize=4,
                        label=name,
                    )
            ax.set_xscale("log")
            if line > 0:
                ax.set_yscale("log")
            else:
                ax.axhline(1.0, color=LIMIT_COLOUR, linestyle=":", linewidth=1.0)
            ax.set_title(f"{loop}: {label}", fontsize=9)
            ax.set_xlabel("single-shot waiters (log)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3, which="both")
    handles: list[Artist] = []
    labels: list[str] = []
    for row in axes:
        for ax in row:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8)
    fig.suptitle(
        f"Waiter scaling ({cfg.waiters_rate:,.0f}/s, burst {cfg.waiters_capacity:g})", fontsize=10
    )
    return _save(fig, out, "waiters.png")


def draw_all(results: Results, series: Series, cfg: Config, out: str) -> dict[str, str]:
    """Every plot the results allow; label -> file name inside ``out``."""
    drawn: dict[str, str | None] = {}
    for loop in _shown(list(dict.fromkeys(r.result.loop for r in results.saturation)), cfg):
        drawn[f"timeline_{loop}"] = timeline(results, series, cfg, out, loop)
        drawn[f"latency_{loop}"] = latency(results, series, cfg, out, loop)
    drawn["cpu"] = cpu(results, cfg, out)
    drawn["waiters"] = waiters(results, cfg, out)
    return {label: name for label, name in drawn.items() if name is not None}
