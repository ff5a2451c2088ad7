"""PNG plots of a ``run_all.py`` run (matplotlib, without pyplot's global state). Each
figure has one or two panels, sized to stay readable at a page's width:

- ``cpu_<loop>.png``: CPU per 1,000 admissions against the number of waiting tasks;
- ``timeline_<loop>.png``: admissions over time at 1,000 tasks, against the limit;
- ``latency_<loop>.png``: wait-latency CDFs at the fewest and the most tasks;
- ``waiters_<loop>.png``: waiter scaling: CPU per waiter and peak memory.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from matplotlib.colors import TABLEAU_COLORS
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from matplotlib.axes import Axes

    from report import Results
    from workloads.saturation import Series

LIMIT = "#d62728"
PALETTE = [str(colour) for colour in TABLEAU_COLORS.values() if colour != LIMIT]  # tab10 but red
DPI = 110
SMALL: dict[str, Any] = {"fontsize": 9}


def _figure(panels: int, height: float = 4.4) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(8.0, height), layout="constrained")
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _log(ax: Axes, *axes: str) -> None:
    """Log scale with plain-number labels on the decades only (no overlapping ticks)."""
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    for name in axes:
        axis = ax.xaxis if name == "x" else ax.yaxis
        getattr(ax, f"set_{name}scale")("log")
        axis.set_major_locator(LogLocator(base=10, numticks=7))
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())


def _finish(
    fig: Figure, axes: list[Axes], labels: tuple[str, str], title: str, out: str, name: str
) -> str:
    """Label the axes (x on each panel, y on the first), draw one legend for all the
    panels, and save the figure as ``name`` in ``out``; returns ``name``."""
    axes[0].set_ylabel(labels[1], **SMALL)
    handles: dict[str, Any] = {}
    for ax in axes:
        ax.set_xlabel(labels[0], **SMALL)
        ax.grid(alpha=0.3, which="major")
        ax.tick_params(labelsize=8)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    legend = (list(handles.values()), list(handles))
    fig.legend(*legend, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(os.path.join(out, name), dpi=DPI)
    return name


def _lines(
    ax: Axes, rows: list[Any], colours: dict[str, str], point: Callable[[Any], tuple[float, float]]
) -> None:
    """One line per limiter through the finite ``point(row)`` of its rows."""
    for name, colour in colours.items():
        points = [point(r) for r in rows if r.name == name]
        if points := sorted(p for p in points if not math.isnan(p[1])):
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.3, color=colour, label=name)


def _steps(ax: Axes, xs: Sequence[float], ys: Sequence[float], colour: str, label: str) -> None:
    ax.step(xs, ys, where="post", color=colour, linewidth=1.2, label=label)


def cpu(results: Results, loop: str, colours: dict[str, str], out: str) -> str | None:
    rows = [r for r in results.saturation if r.loop == loop]
    if not rows:
        return None
    fig, (ax,) = _figure(1, 4.8)
    _lines(ax, rows, colours, lambda r: (r.tasks, r.cpu_ms_per_1k))
    if floor := results.loop_floor.get(loop):
        label = "event-loop floor (1 wake-up / adm)"
        ax.axhline(floor * 1e6, color="black", linestyle=":", label=label)
    _log(ax, "x", "y")
    title = f"Saturation on {loop}: CPU per admission against waiting tasks"
    labels = ("waiting tasks", "CPU ms per 1,000 admissions")
    return _finish(fig, [ax], labels, title, out, f"cpu_{loop}.png")


def timeline(
    results: Results, series: Series, loop: str, colours: dict[str, str], out: str
) -> str | None:
    counts = sorted({r.tasks for r in results.saturation if r.loop == loop})
    if not counts:
        return None
    tasks = 1_000 if 1_000 in counts else counts[-1]
    cfg = results.config["saturation"]
    end = cfg["warmup"] + cfg["duration"]
    fig, (ax,) = _figure(1, 5.0)
    for r in (r for r in results.saturation if r.loop == loop and r.tasks == tasks):
        times = series.timelines.get((loop, r.name, tasks), [])
        label = f"{r.name}: {r.achieved:.0%}" + (" OVER" if r.over else "")
        _steps(ax, times, range(1, len(times) + 1), colours[r.name], label)
    limit = [cfg["capacity"], cfg["capacity"] + cfg["rate"] * end]
    ax.plot([0.0, end], limit, "--", color=LIMIT, linewidth=1.0, label="limit: burst + rate x t")
    ax.set_xlim(0.0, end)
    labels = ("seconds since the first call", "admissions (cumulative)")
    title = f"Saturation on {loop}: {tasks:,} tasks, {cfg['rate']:,.0f}/s (legend: rate achieved)"
    return _finish(fig, [ax], labels, title, out, f"timeline_{loop}.png")


def latency(
    results: Results, series: Series, loop: str, colours: dict[str, str], out: str
) -> str | None:
    counts = sorted({key[2] for key in series.latencies if key[0] == loop})
    if not counts:
        return None
    shown = sorted({counts[0], counts[-1]})
    rate = results.config["saturation"]["rate"]
    fig, axes = _figure(len(shown))
    for ax, tasks in zip(axes, shown, strict=True):
        for name, colour in colours.items():
            if waits := series.latencies.get((loop, name, tasks)):
                ordered = sorted(max(w * 1e3, 1e-3) for w in waits)
                shares = [(i + 1) / len(ordered) for i in range(len(ordered))]
                _steps(ax, ordered, shares, colour, name)
        ax.axvline(tasks / rate * 1e3, color=LIMIT, linestyle=":", label="tasks / rate (FIFO)")
        _log(ax, "x")
        ax.set_ylim(0.0, 1.0)
        ax.set_title(f"{tasks:,} tasks", **SMALL)
    title = f"Wait latency under saturation on {loop} (CDF)"
    return _finish(fig, axes, ("wait, ms", "share of grants"), title, out, f"latency_{loop}.png")


def _mib(memory: int | None) -> float:
    return math.nan if memory is None else max(memory, 1) / 2**20


def waiters(results: Results, loop: str, colours: dict[str, str], out: str) -> str | None:
    rows = [r for r in results.waiters if r.loop == loop]
    if not rows:
        return None
    fig, axes = _figure(2)
    metrics: list[tuple[str, Callable[[Any], float]]] = [
        ("CPU us per waiter", lambda r: r.cpu_us_per_waiter),
        ("peak memory, MiB", lambda r: _mib(r.memory_bytes)),
    ]
    for ax, (label, value) in zip(axes, metrics, strict=True):
        _lines(ax, rows, colours, lambda r: (r.waiters, value(r)))  # noqa: B023 - called at once
        _log(ax, "x", "y")
        ax.set_title(label, **SMALL)
    title = f"Waiter scaling on {loop}"
    return _finish(fig, axes, ("single-shot waiters", ""), title, out, f"waiters_{loop}.png")


def draw_all(results: Results, series: Series, out: str, quick: bool) -> dict[str, str]:
    """Every plot the results allow (for the first loop only with --quick: matplotlib is
    slow); label -> file name inside ``out``."""
    rows: list[Any] = [*results.saturation, *results.waiters]
    names = list(dict.fromkeys(r.name for r in rows))
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    found = list(dict.fromkeys(r.loop for r in rows))
    drawn: dict[str, str | None] = {}
    for loop in found[:1] if quick else found:
        drawn[f"cpu_{loop}"] = cpu(results, loop, colours, out)
        drawn[f"timeline_{loop}"] = timeline(results, series, loop, colours, out)
        drawn[f"latency_{loop}"] = latency(results, series, loop, colours, out)
        drawn[f"waiters_{loop}"] = waiters(results, loop, colours, out)
    return {label: name for label, name in drawn.items() if name is not None}
