"""The report of a ``run_all.py`` run: a summary (targets, tokenbucket against each peer,
the plots that decide), then one section per workload with its table folded away."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import peers
from _harness import SLACK_ADMISSIONS, Columns, Loop, describe, loops, markdown_table, number
from workloads import cancellation, llm, saturation, uncontended, waiters

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

RED = "\N{LARGE RED CIRCLE}"
NOT_RUN = "not run"


@dataclass
class Results:
    environment: dict[str, Any]
    config: dict[str, Any]
    uncontended: list[uncontended.Row] = field(default_factory=list)
    loop_floor: dict[str, float] = field(default_factory=dict)
    saturation: list[saturation.Row] = field(default_factory=list)
    waiters: list[waiters.Row] = field(default_factory=list)
    cancellation: list[cancellation.Row] = field(default_factory=list)
    llm: list[llm.Row] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)


def _x(value: float) -> str:
    return number(value, ".2f", "x")


def _ms(value: float) -> str:
    return number(value, ",.0f" if value >= 100 else ".1f")


def _span(values: Iterable[float], spec: str, unit: str = "") -> str:
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return "n/a"
    low, high = f"{min(known):{spec}}", f"{max(known):{spec}}"
    return f"{low}{unit}" if low == high else f"{low}-{high}{unit}"


def _loops(*tables: list[Any]) -> list[Loop]:
    """The loops of these rows, in the order of ``loops()``."""
    found = {r.loop for rows in tables for r in rows}
    return [loop for loop in loops() if loop.name in found]


def _find(rows: list[Any], loop: str, name: str, **match: Any) -> Any:
    wanted = {"loop": loop, "name": name, **match}
    return next((r for r in rows if all(getattr(r, k) == v for k, v in wanted.items())), None)


def _table(workload: str, columns: Columns, rows: list[Any]) -> str:
    """Rows of each loop followed by a ``n/a: reason`` row per peer that cannot run it."""
    body: list[list[str]] = []
    for loop in _loops(rows):
        mine = (r for r in rows if r.loop == loop.name)
        body += [[r.loop, r.name, *(cell(r) for _, cell in columns)] for r in mine]
        body += [
            [loop.name, name, f"n/a: {why}", *[""] * (len(columns) - 1)]
            for name, why in peers.not_applicable(workload, loop)
        ]
    headers = ["loop", "limiter", *(h for h, _ in columns)]
    return markdown_table(headers, body, range(2, len(headers)))


def folded(summary: str, *blocks: str) -> list[str]:
    """A collapsed block (GitHub and mkdocs-material with md_in_html both render it)."""
    head = f'<details markdown="1">\n<summary>{summary}</summary>'
    return [head, "", *blocks, "", "</details>", ""]


# -- the tables (header, cell) -----------------------------------------------------------


def _peak(r: saturation.Row) -> str:
    text = f"{r.peak:,} / {r.allowed:,.0f}"
    return f"{RED} {text} (+{r.peak - r.allowed:,.0f})" if r.over else text


def _jain(r: saturation.Row) -> str:
    return "n/a" if math.isnan(r.fairness) else f"{r.fairness:.3f} / {r.fairness_best:.3f}"


def _memory(r: waiters.Row, divisor: float, digits: int) -> str:
    return "n/a" if r.memory_bytes is None else f"{r.memory_bytes / divisor:,.{digits}f}"


def _throughput(r: cancellation.Row) -> str:
    return "n/a: none left waiting" if r.survivors == 0 else f"{r.throughput:.1%}"


UNCONTENDED: Columns = [
    ("ns/op (min)", lambda r: f"{r.ns_per_op:,.0f}"),
    ("vs floor", lambda r: f"{r.ratio:.2f}x"),
    ("vs tokenbucket", lambda r: _x(r.vs_tokenbucket)),
    ("min / min floor", lambda r: f"{r.ratio_of_minima:.2f}x"),
    ("awaits / sample", lambda r: f"{r.ops:,}"),
    ("samples", lambda r: str(len(r.samples))),
]
SATURATION: Columns = [
    ("tasks", lambda r: f"{r.tasks:,}"),
    ("rate", lambda r: f"{r.achieved:.1%}"),
    ("peak in a window / allowed", _peak),
    ("CPU ms / 1k adm", lambda r: f"{r.cpu_ms_per_1k:,.1f}"),
    ("CPU load", lambda r: f"{r.cpu_load:.0%}"),
    ("wait p50 ms", lambda r: _ms(r.wait_p50_ms)),
    ("wait p99 ms", lambda r: _ms(r.wait_p99_ms)),
    ("Jain / best", _jain),
    ("starved", lambda r: f"{r.starved:,}"),
    ("out of order", lambda r: f"{r.out_of_order:.1%}"),
    ("steps / adm", lambda r: number(r.steps_per_admission, ".2f")),
]
WAITERS: Columns = [
    ("waiters", lambda r: f"{r.waiters:,}"),
    ("granted", lambda r: f"{r.granted:,}" + " (capped)" * r.capped),
    ("wall s", lambda r: f"{r.wall:.3f}"),
    ("ideal s", lambda r: f"{r.ideal:.3f}"),
    ("wall / ideal", lambda r: _x(r.ratio) if r.ideal >= 0.1 else "n/a: in the burst"),
    ("CPU us / waiter", lambda r: f"{r.cpu_us_per_waiter:,.1f}"),
    ("CPU load", lambda r: number(r.cpu_load, ".0%")),
    ("peak MiB", lambda r: _memory(r, 2**20, 1)),
    ("bytes / waiter", lambda r: _memory(r, r.waiters, 0)),
]
CANCELLATION: Columns = [
    ("granted before", lambda r: f"{r.before_cancel:,}"),
    ("cancelled", lambda r: f"{r.cancelled:,}"),
    ("survivors granted", lambda r: f"{r.granted:,} / {r.survivors:,}" + " (capped)" * r.capped),
    ("wall s", lambda r: f"{r.wall:.3f}"),
    ("ideal s", lambda r: f"{r.ideal:.3f}"),
    ("throughput / rate", _throughput),
    ("cancel not taken", lambda r: f"{r.not_cancelled:,}"),
]


def llm_columns(cfg: llm.Config) -> Columns:
    r_limit, t_limit = cfg.requests_per_second * cfg.window, cfg.tokens_per_second * cfg.window

    def peak(value: int, limit: float) -> str:
        return f"{value:,}" + (f" (+{(value - limit) / limit:.0%})" if value > limit else "")

    return [
        ("req % of R", lambda r: f"{r.request_share:.1%}"),
        ("tok % of T", lambda r: f"{r.token_share:.1%}"),
        ("peak req: run", lambda r: peak(r.peak_requests, r_limit)),
        ("steady", lambda r: peak(r.steady_peak_requests, r_limit)),
        ("peak tok: run", lambda r: peak(r.peak_tokens, t_limit)),
        ("steady", lambda r: peak(r.steady_peak_tokens, t_limit)),
        ("CPU ms / 1k req", lambda r: _ms(r.cpu_ms_per_1k)),
        ("CPU vs Limiter", lambda r: _x(r.cpu_vs_baseline)),
        ("tasks / req", lambda r: f"{r.tasks_per_request:.2f}"),
        ("task steps / req", lambda r: f"{r.steps_per_request:.2f}"),
    ]


def llm_reading(rows: list[llm.Row], cfg: llm.Config) -> str:
    """A short reading of the LLM table, written from its numbers."""
    parts = []
    for r in (r for r in rows if r.name == llm.BASELINE):
        if r.over(cfg, steady=True):
            verdict = f"EXCEEDED a limit after the warm-up in {r.rounds_over_steady} of {r.samples}"
        elif r.over(cfg, steady=False):
            verdict = (
                f"exceeded a limit only in the opening second in {r.rounds_over} of {r.samples}"
            )
        else:
            verdict = "never exceeded either limit in any rolling second"
        parts.append(
            f"On {r.loop}, tokenbucket.Limiter used {r.request_share:.1%} of R and "
            f"{r.token_share:.1%} of T, {verdict}, at {_ms(r.cpu_ms_per_1k)} ms CPU per 1,000 "
            f"requests with {r.tasks_per_request:.2f} tasks and {r.steps_per_request:.2f} task "
            "steps per request."
        )
    others = [r for r in rows if r.name != llm.BASELINE]
    if steady := "; ".join(f"{r.name} ({r.loop})" for r in others if r.over(cfg, steady=True)):
        parts.append(
            f"Over a limit in a rolling second after the warm-up (what a provider with a sliding "
            f"window would reject): {steady}. These take the two limits one after the other (or in "
            "two tasks): a request holds its request unit while it waits for tokens and goes out "
            "later than it was counted, in a bunch with others. The gather rows are token buckets "
            "holding a second's worth, so their opening second may reach twice a limit by design."
        )
    known = (r for r in others if not math.isnan(r.cpu_vs_baseline))
    if costly := sorted(known, key=lambda r: r.cpu_vs_baseline):
        low, high = costly[0], costly[-1]
        parts.append(
            f"The peers spent {low.cpu_vs_baseline:.1f}x ({low.name}, {low.loop}) to "
            f"{high.cpu_vs_baseline:.1f}x ({high.name}, {high.loop}) the Limiter's CPU per request."
        )
    return " ".join(parts)


# -- the summary -------------------------------------------------------------------------


def targets(results: Results) -> tuple[int, int, str]:
    """tokenbucket's performance targets: (met, checked, a table of the measured figure
    and the verdict per target and loop)."""
    out: dict[str, dict[str, str]] = {}
    verdicts: list[bool] = []

    def check(target: str, loop: str, measured: str, ok: bool) -> None:
        out.setdefault(target, {})[loop] = f"{measured}: {'met' if ok else RED + ' not met'}"
        verdicts.append(ok)

    for loop in (loop.name for loop in _loops(results.uncontended)):
        rows = [r for r in results.uncontended if r.loop == loop]
        theirs = (r for r in rows if r.name.split(".")[0] not in ("tokenbucket", uncontended.FLOOR))
        best = min(theirs, key=lambda r: r.ratio, default=None)
        fastest = f" (fastest peer {best.ratio:.2f}x, {best.name.split()[0]})" if best else ""
        for name in (peers.TOKENBUCKET, "tokenbucket.SlidingWindow"):
            if mine := _find(rows, loop, name):
                ok = mine.ratio <= 3.5 and (best is None or mine.ratio < best.ratio)
                check(
                    f"{name}: <= 3.5x floor, below every peer", loop, _x(mine.ratio) + fastest, ok
                )
        for name in (peers.LIMITER, peers.LIMITER_CONCURRENCY):
            if mine := _find(rows, loop, name):
                check(
                    f"{name} acquire+release: <= 15x floor", loop, _x(mine.ratio), mine.ratio <= 15
                )
        pair, limiter = _find(rows, loop, peers.AIO_GATHER), _find(rows, loop, peers.LIMITER)
        if pair is not None and limiter is not None:
            speedup = pair.ratio / limiter.ratio
            check(
                "tokenbucket.Limiter: >= 15x faster than gather of two aiolimiters",
                loop,
                f"{speedup:.1f}x ({pair.ratio:.0f}x vs {limiter.ratio:.0f}x floor)",
                speedup >= 15,
            )
    for loop in (loop.name for loop in _loops(results.saturation)):
        if not (runs := _runs(results, loop, peers.TOKENBUCKET)):
            continue
        check(
            "saturation: rate >= 99% of configured, never over",
            loop,
            f"{_span([r.achieved * 100 for r in runs], '.1f', '%')}, peak - allowed "
            f"{max(r.peak - r.allowed for r in runs):+.0f} (+/-{SLACK_ADMISSIONS})",
            min(r.achieved for r in runs) >= 0.99 and not any(r.over for r in runs),
        )
        inversions = sum(r.adjacent_inversions for r in runs)
        check("saturation: 0 grants out of order", loop, str(inversions), inversions == 0)
        low, high = runs[0], runs[-1]
        spread = high.cpu_ms_per_1k / low.cpu_ms_per_1k
        check(
            f"saturation: CPU / admission at {high.tasks:,} tasks <= 1.2x at {low.tasks:,}",
            loop,
            f"{spread:.2f}x ({low.cpu_ms_per_1k:.0f} to {high.cpu_ms_per_1k:.0f} ms / 1k)",
            spread <= 1.2,
        )
    names = list(dict.fromkeys(loop for cells in out.values() for loop in cells))
    body = [[target, *(cells.get(n, "n/a") for n in names)] for target, cells in out.items()]
    return sum(verdicts), len(verdicts), markdown_table(["target", *names], body) if body else ""


def _runs(results: Results, loop: str, name: str) -> list[saturation.Row]:
    """The saturation runs of one limiter on one loop, by task count."""
    rows = (r for r in results.saturation if r.loop == loop and r.name == name)
    return sorted(rows, key=lambda r: r.tasks)


HEADLINE = [
    "uncontended vs tokenbucket",
    "rate achieved",
    "over-admits",
    "CPU / 1k adm vs tokenbucket",
    "Jain / best (worst)",
    "out of order (worst)",
    "{most:,} waiters: wall / ideal",
    "cancellation: throughput",
    "LLM: CPU vs Limiter",
    "LLM: over a limit",
]


def _saturation_cells(sat: list[saturation.Row], base: dict[int, float], ours: bool) -> list[str]:
    if not sat:
        return [NOT_RUN] * 5
    known = [r.fairness_norm for r in sat if not math.isnan(r.fairness_norm)]
    cpu = [r.cpu_ms_per_1k / base[r.tasks] for r in sat if r.tasks in base]
    return [
        _span([r.achieved * 100 for r in sat], ".1f", "%"),
        f"{RED} yes" if any(r.over for r in sat) else "no",
        _span([r.cpu_ms_per_1k for r in sat], ".0f", " ms") if ours else _span(cpu, ".1f", "x"),
        f"{min(known):.2f}" if known else "n/a",
        f"{max(r.out_of_order for r in sat):.1%}",
    ]


def _llm_cells(rows: list[llm.Row], cfg: llm.Config, loop: Loop, peer: peers.Peer) -> list[str]:
    if (why := peer.why_not("llm", loop)) is not None:
        return [f"n/a: {why}", ""]
    if peer.llm is None:  # the same library's LLM row
        same = (p for p in peers.all_peers() if p.llm and p.distribution == peer.distribution)
        peer = next(same, peer)
    if (row := _find(rows, loop.name, peer.name)) is None:
        return [NOT_RUN, NOT_RUN]
    if row.over(cfg, steady=True):
        return [_x(row.cpu_vs_baseline), f"{RED} yes (steady)"]
    return [_x(row.cpu_vs_baseline), "opening second only" if row.over(cfg, steady=False) else "no"]


def headline_table(
    results: Results, llm_rows: list[llm.Row], llm_cfg: llm.Config, most: int
) -> str:
    body = []
    for loop in _loops(results.uncontended, results.saturation):
        base = {r.tasks: r.cpu_ms_per_1k for r in _runs(results, loop.name, peers.TOKENBUCKET)}
        for peer in (p for p in peers.all_peers() if p.rated and (p.ours or not loop.is_trio)):
            if (why := peer.why_not("saturation", loop)) is not None:
                body.append([loop.name, peer.name, f"n/a: {why}", *[""] * 9])
                continue
            ours = peer.name == peers.TOKENBUCKET
            unc = _find(results.uncontended, loop.name, peer.name)
            wai = _find(results.waiters, loop.name, peer.name, waiters=most)
            can = _find(results.cancellation, loop.name, peer.name)
            vs_ours = f"{unc.ns_per_op:,.0f} ns ({unc.ratio:.2f}x floor)" if ours and unc else ""
            body.append(
                [
                    loop.name,
                    peer.name,
                    NOT_RUN if unc is None else vs_ours or _x(unc.vs_tokenbucket),
                    *_saturation_cells(_runs(results, loop.name, peer.name), base, ours),
                    NOT_RUN if wai is None else _x(wai.ratio) + " (capped)" * wai.capped,
                    NOT_RUN if can is None else _throughput(can),
                    *_llm_cells(llm_rows, llm_cfg, loop, peer),
                ]
            )
    headers = ["loop", "limiter", *(h.format(most=most) for h in HEADLINE)]
    return markdown_table(headers, body)


# -- the report --------------------------------------------------------------------------

WAITING = (
    "How they wait (read from their sources): tokenbucket keeps one FIFO queue and one timer "
    "per limiter and wakes each waiter once, when it is granted. aiolimiter keeps its waiters "
    "in a heap and wakes the next when capacity frees, but a caller that finds capacity free "
    "takes it even when others wait. pyrate-limiter holds an `asyncio.Lock` while it sleeps the "
    "computed delay plus `buffer_ms` (50 ms by default), so waiters are served one at a time, "
    "50 ms apart at best. throttled-py's wait-and-retry mode sleeps `max(min(retry_after, 0.5), "
    "0.2)` s between attempts: at least 200 ms, and its token bucket reports `retry_after` in "
    "whole seconds. asyncio-throttle re-checks its log every `retry_interval` (10 ms). `limits` "
    "does not wait at all; the polling loop its users write sleeps until the reset time it "
    "reports, and its periods are whole seconds."
)
SUMMARY = (
    "tokenbucket against each peer. Uncontended: the peer's cost per `acquire` over "
    "tokenbucket's. Rate, CPU, fairness, order: over the saturation runs; CPU per 1,000 "
    "admissions over tokenbucket's at the same task count. Jain / best: fairness of the "
    "tasks' admission counts over the best whole counts allow (1 = as even as possible)."
)
SATURATION_PLOTS = {
    "cpu": "CPU per admission",
    "timeline": "Admissions over time",
    "latency": "Wait latency",
}


def _images(
    plots: dict[str, str], kind: str, alt: str, which: Callable[[str], bool] = bool
) -> list[str]:
    """The plots ``<kind>_<loop>`` of the loops ``which`` accepts, with the loop in the alt."""
    found = [
        (label.split("_", 1)[1], name)
        for label, name in plots.items()
        if label.startswith(kind + "_")
    ]
    return [
        line for loop, name in found if which(loop) for line in (f"![{alt}, {loop}]({name})", "")
    ]


def report(results: Results, cfg: Any, plots: dict[str, str]) -> str:
    sat, wai, can, llm_cfg = cfg.saturation, cfg.waiters, cfg.cancellation, cfg.llm
    llm_rows = llm.summarise(results.llm, llm_cfg)
    first = next((loop.name for loop in _loops(results.saturation)), "asyncio")
    parts = [
        "# Benchmarks: tokenbucket against the async Python limiters",
        "",
        describe(results.environment) + " Every figure comes from this one run on this one "
        "machine; ratios compare figures of the same run. The method is in `benchmarks/README.md`.",
        "",
    ]
    if cfg.mode == "quick":
        parts += [
            "**--quick run: sizes far too small to judge anything; it proves the suite runs.**"
        ]
        parts += [""]
    parts += ["## Summary", ""]
    met, checked, table = targets(results)
    if checked:
        parts += [f"tokenbucket's performance targets: {met} of {checked} met in this run."]
        parts += ["", table, ""]
    if results.saturation or results.uncontended:
        parts += [SUMMARY, "", headline_table(results, llm_rows, llm_cfg, max(wai.counts)), ""]
    parts += _images(plots, "cpu", "CPU per admission against waiting tasks", first.__eq__)
    parts += _images(plots, "timeline", "Admissions over time under saturation", first.__eq__)
    parts += _images(plots, "latency", "Wait latency under saturation", first.__eq__)
    parts += ["## The limiters", ""]
    limiters = "\n".join(
        f"- **{p.name}** ({p.distribution}): {p.how}"
        + (f". Note: {p.caveat}" if p.caveat else "")
        + "."
        for p in peers.all_peers()
    )
    title = "How each limiter is configured and awaited, and how it waits"
    parts += folded(title, limiters, "", WAITING)
    floors = ", ".join(f"{n} {s * 1e6:.1f} us" for n, s in results.loop_floor.items())
    isolated = (
        "each run in a fresh process." if wai.isolate else "all runs in one process (--quick)."
    )
    sections = {  # workload: (title, what it measures, its columns)
        "uncontended": (
            "## 1. Uncontended acquire",
            "ns per `await acquire()` when capacity never runs out. vs floor: median over "
            "interleaved samples of the candidate over the floor (an awaited empty coroutine) "
            "timed just before and after it in the same loop.",
            UNCONTENDED,
        ),
        "saturation": (
            "## 2. Saturation",
            f"N tasks loop on `acquire()` of one limiter at {sat.rate:,.0f} units/s, burst "
            f"{sat.capacity:g}; {sat.duration:g} s measured after {sat.warmup:g} s. Peak: most "
            f"admissions certainly inside one window against rate x window + burst ({RED}: more "
            f"than {SLACK_ADMISSIONS} over; window {min(sat.window, sat.duration):g} "
            "s). Wait: call to resumption. Out of order: adjacent grants whose arrival order is "
            f"inverted. Event-loop floor (CPU per wake-up of a task sleeping 1 ms): {floors}.",
            SATURATION,
        ),
        "waiters": (
            "## 3. Waiter scaling",
            f"n tasks each call `acquire()` once at {wai.rate:,.0f} units/s, burst "
            f"{wai.capacity:g}. Ideal: (n - burst) / rate; runs stop at {wai.cap_factor:g} x "
            f"ideal + {wai.cap_slack:g} s (capped). Memory: {waiters.MEMORY_METHOD}; {isolated}",
            WAITERS,
        ),
        "cancellation": (
            "## 4. Cancellation",
            f"{can.waiters:,} single-shot waiters at {can.rate:,.0f} units/s, burst "
            f"{can.capacity:g}; {can.delay * 1e3:g} ms after the last spawn the odd-numbered ones "
            "still waiting are cancelled. Throughput: survivors granted / (last grant - "
            "cancellation) / rate.",
            CANCELLATION,
        ),
    }
    for workload, (title, intro, columns) in sections.items():
        if rows := getattr(results, workload):
            parts += [title, "", intro, "", *folded("The table", _table(workload, columns, rows))]
        if rows and workload == "saturation":
            for kind, alt in SATURATION_PLOTS.items():
                if images := _images(plots, kind, alt, first.__ne__):
                    parts += folded(f"{alt}: the other event loops", *images)
        if rows and workload == "waiters":
            parts += folded("Plots", *_images(plots, "waiters", "Waiter scaling"))
    if results.llm:
        patterns = "\n".join(f"- {p.name}: {p.llm_how}" for p in peers.all_peers() if p.llm)
        parts += [
            "## 5. LLM composite workload",
            "",
            f"{llm_cfg.tasks} tasks against R = {llm_cfg.requests_per_second:,} requests/s and T "
            f"= {llm_cfg.tokens_per_second:,} tokens/s (rolling second); costs from a lognormal "
            f"sequence (mean {results.costs['mean']:.0f}, p99 {results.costs['p99']:.0f}); "
            f"{llm_cfg.duration:g} s measured after {llm_cfg.warmup:g} s, {llm_cfg.samples} "
            "round(s).",
            "",
            llm_reading(llm_rows, llm_cfg),
            "",
            *folded("The table", _table("llm", llm_columns(llm_cfg), llm_rows), "", patterns),
        ]
    return "\n".join(parts)
