"""The report of a ``run_all.py`` run: a summary (targets, tokenbucket against each peer,
the plots that decide), then one section per workload with its table folded away."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import peers
from _harness import Loop, describe, loops, markdown_table
from workloads import cancellation, llm, saturation, uncontended, waiters

if TYPE_CHECKING:
    from collections.abc import Callable

RED = "\N{LARGE RED CIRCLE}"


@dataclass
class Results:
    environment: dict[str, Any]
    config: dict[str, Any]
    uncontended: list[uncontended.Row] = field(default_factory=list)
    loop_floor: dict[str, float] = field(default_factory=dict)
    saturation: list[saturation.Row] = field(default_factory=list)
    waiters: list[waiters.Row] = field(default_factory=list)
    cancellation: list[cancellation.Row] = field(default_factory=list)
    llm: list[llm.Sample] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else (f"{value:,.0f}" if value >= 100 else f"{value:.1f}")


def _span(values: list[float], spec: str, unit: str = "") -> str:
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return "n/a"
    low, high = f"{min(known):{spec}}", f"{max(known):{spec}}"
    return f"{low}{unit}" if low == high else f"{low}-{high}{unit}"


def _loops(names: list[str]) -> list[Loop]:
    return [loop for loop in loops() if loop.name in names]


def _table(workload: str, columns: list[tuple[str, Callable[[Any], str]]], rows: list[Any]) -> str:
    """Rows of each loop followed by a ``n/a: reason`` row per peer that cannot run it."""
    body: list[list[str]] = []
    for loop in _loops(list(dict.fromkeys(r.loop for r in rows))):
        body += [
            [r.loop, r.name, *(cell(r) for _, cell in columns)] for r in rows if r.loop == loop.name
        ]
        missing = peers.not_applicable(workload, loop)
        body += [
            [loop.name, name, f"n/a: {why}", *[""] * (len(columns) - 1)] for name, why in missing
        ]
    return markdown_table(
        ["loop", "limiter", *(h for h, _ in columns)], body, range(2, len(columns) + 2)
    )


def folded(summary: str, *blocks: str) -> list[str]:
    """A collapsed block (GitHub and mkdocs-material with md_in_html both render it)."""
    return [
        f'<details markdown="1">\n<summary>{summary}</summary>',
        "",
        *blocks,
        "",
        "</details>",
        "",
    ]


# -- the tables (header, cell) -----------------------------------------------------------


def _peak(r: saturation.Row) -> str:
    text = f"{r.peak:,} / {r.allowed:,.0f}"
    return f"{RED} {text} (+{r.peak - r.allowed:,.0f})" if r.over else text


UNCONTENDED: list[tuple[str, Callable[[uncontended.Row], str]]] = [
    ("ns/op (min)", lambda r: f"{r.ns_per_op:,.0f}"),
    ("vs floor", lambda r: f"{r.ratio:.2f}x"),
    ("vs tokenbucket", lambda r: _x(r.vs_tokenbucket)),
    ("min / min floor", lambda r: f"{r.ratio_of_minima:.2f}x"),
    ("awaits / sample", lambda r: f"{r.ops:,}"),
    ("samples", lambda r: str(len(r.samples))),
]
SATURATION: list[tuple[str, Callable[[saturation.Row], str]]] = [
    ("tasks", lambda r: f"{r.tasks:,}"),
    ("rate", lambda r: f"{r.achieved:.1%}"),
    ("peak in a window / allowed", lambda r: _peak(r)),
    ("CPU ms / 1k adm", lambda r: f"{r.cpu_ms_per_1k:,.1f}"),
    ("CPU load", lambda r: f"{r.cpu_load:.0%}"),
    ("wait p50 ms", lambda r: _ms(r.wait_p50_ms)),
    ("wait p99 ms", lambda r: _ms(r.wait_p99_ms)),
    (
        "Jain / best",
        lambda r: "n/a" if math.isnan(r.fairness) else f"{r.fairness:.3f} / {r.fairness_best:.3f}",
    ),
    ("starved", lambda r: f"{r.starved:,}"),
    ("out of order", lambda r: f"{r.out_of_order:.1%}"),
    ("steps / adm", lambda r: _x(r.steps_per_admission).rstrip("x")),
]
WAITERS: list[tuple[str, Callable[[waiters.Row], str]]] = [
    ("waiters", lambda r: f"{r.waiters:,}"),
    ("granted", lambda r: f"{r.granted:,}" + " (capped)" * r.capped),
    ("wall s", lambda r: f"{r.wall:.3f}"),
    ("ideal s", lambda r: f"{r.ideal:.3f}"),
    ("wall / ideal", lambda r: _x(r.ratio) if r.ideal >= 0.1 else "n/a: in the burst"),
    ("CPU us / waiter", lambda r: f"{r.cpu_us_per_waiter:,.1f}"),
    ("CPU load", lambda r: "n/a" if math.isnan(r.cpu_load) else f"{r.cpu_load:.0%}"),
    ("peak MiB", lambda r: "n/a" if r.memory_bytes is None else f"{r.memory_bytes / 2**20:,.1f}"),
    (
        "bytes / waiter",
        lambda r: "n/a" if r.memory_bytes is None else f"{r.memory_bytes / r.waiters:,.0f}",
    ),
]


def _throughput(r: cancellation.Row) -> str:
    return "n/a: none left waiting" if r.survivors == 0 else f"{r.throughput:.1%}"


CANCELLATION: list[tuple[str, Callable[[cancellation.Row], str]]] = [
    ("granted before", lambda r: f"{r.before_cancel:,}"),
    ("cancelled", lambda r: f"{r.cancelled:,}"),
    ("survivors granted", lambda r: f"{r.granted:,} / {r.survivors:,}" + " (capped)" * r.capped),
    ("wall s", lambda r: f"{r.wall:.3f}"),
    ("ideal s", lambda r: f"{r.ideal:.3f}"),
    ("throughput / rate", _throughput),
    ("cancel not taken", lambda r: f"{r.not_cancelled:,}"),
]


def llm_columns(cfg: llm.Config) -> list[tuple[str, Callable[[llm.Row], str]]]:
    def peak(value: int, limit: float) -> str:
        return f"{value:,}" + (f" (+{(value - limit) / limit:.0%})" if value > limit else "")

    r_limit, t_limit = cfg.requests_per_second * cfg.window, cfg.tokens_per_second * cfg.window
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
            f"{r.token_share:.1%} "
            f"of T, {verdict}, at {_ms(r.cpu_ms_per_1k)} ms CPU per 1,000 requests with "
            f"{r.tasks_per_request:.2f} tasks and {r.steps_per_request:.2f} task steps per request."
        )
    others = [r for r in rows if r.name != llm.BASELINE]
    steady = "; ".join(f"{r.name} ({r.loop})" for r in others if r.over(cfg, steady=True))
    if steady:
        parts.append(
            f"Over a limit in a rolling second after the warm-up (what a provider with a sliding "
            f"window would reject): {steady}. These take the two limits one after the other (or in "
            "two tasks): a request holds its request unit while it waits for tokens and goes out "
            "later than it was counted, in a bunch with others. The gather rows are token buckets "
            "holding a second's worth, so their opening second may reach twice a limit by design."
        )
    costly = [r for r in others if not math.isnan(r.cpu_vs_baseline)]
    if costly:
        low, high = (
            min(costly, key=lambda r: r.cpu_vs_baseline),
            max(costly, key=lambda r: r.cpu_vs_baseline),
        )
        parts.append(
            f"The peers spent {low.cpu_vs_baseline:.1f}x ({low.name}, {low.loop}) to "
            f"{high.cpu_vs_baseline:.1f}x ({high.name}, {high.loop}) the Limiter's CPU per request."
        )
    return " ".join(parts)


# -- the summary -------------------------------------------------------------------------


def _find(rows: list[Any], loop: str, name: str, **match: Any) -> Any:
    return next(
        (
            r
            for r in rows
            if r.loop == loop
            and r.name == name
            and all(getattr(r, k) == v for k, v in match.items())
        ),
        None,
    )


def targets(results: Results) -> tuple[int, int, str]:
    """tokenbucket's performance targets: (met, checked, a table of the measured figure
    and the verdict per target and loop)."""
    out: dict[str, dict[str, str]] = {}
    verdicts: list[bool] = []

    def check(target: str, loop: str, measured: str, ok: bool) -> None:
        out.setdefault(target, {})[loop] = f"{measured}: {'met' if ok else RED + ' not met'}"
        verdicts.append(ok)

    for loop in dict.fromkeys(r.loop for r in results.uncontended):
        rows = [r for r in results.uncontended if r.loop == loop]
        theirs = [
            r for r in rows if not r.name.startswith("tokenbucket") and r.name != uncontended.FLOOR
        ]
        best = min(theirs, key=lambda r: r.ratio, default=None)
        for name in (peers.TOKENBUCKET, "tokenbucket.SlidingWindow"):
            if (mine := _find(rows, loop, name)) is not None:
                measured = f"{mine.ratio:.2f}x" + (
                    f" (fastest peer {best.ratio:.2f}x, {best.name.split()[0]})" if best else ""
                )
                check(
                    f"{name}: <= 3.5x floor, below every peer",
                    loop,
                    measured,
                    mine.ratio <= 3.5 and (best is None or mine.ratio < best.ratio),
                )
        for name in (peers.LIMITER, peers.LIMITER_CONCURRENCY):
            if (mine := _find(rows, loop, name)) is not None:
                check(
                    f"{name} acquire+release: <= 15x floor",
                    loop,
                    f"{mine.ratio:.2f}x",
                    mine.ratio <= 15,
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
    for loop in dict.fromkeys(r.loop for r in results.saturation):
        runs = sorted(
            (r for r in results.saturation if r.loop == loop and r.name == peers.TOKENBUCKET),
            key=lambda r: r.tasks,
        )
        if not runs:
            continue
        low = min(r.achieved for r in runs)
        check(
            "saturation: rate >= 99% of configured, never over",
            loop,
            f"{_span([r.achieved * 100 for r in runs], '.1f', '%')}, peak - allowed "
            f"{max(r.peak - r.allowed for r in runs):+.0f} (+/-{saturation.SLACK_ADMISSIONS})",
            low >= 0.99 and not any(r.over for r in runs),
        )
        inversions = sum(r.adjacent_inversions for r in runs)
        check("saturation: 0 grants out of order", loop, f"{inversions}", inversions == 0)
        spread = runs[-1].cpu_ms_per_1k / runs[0].cpu_ms_per_1k
        check(
            f"saturation: CPU / admission at {runs[-1].tasks:,} tasks <= 1.2x at {runs[0].tasks:,}",
            loop,
            f"{spread:.2f}x ({runs[0].cpu_ms_per_1k:.0f} to {runs[-1].cpu_ms_per_1k:.0f} ms / 1k)",
            spread <= 1.2,
        )
    names = list(dict.fromkeys(loop for cells in out.values() for loop in cells))
    body = [[target, *(cells.get(n, "n/a") for n in names)] for target, cells in out.items()]
    return sum(verdicts), len(verdicts), markdown_table(["target", *names], body) if body else ""


def _llm_row(rows: list[llm.Row], loop: str, peer: peers.Peer) -> llm.Row | None:
    if peer.llm is None:
        peer = next(
            (p for p in peers.all_peers() if p.llm and p.distribution == peer.distribution), peer
        )
    row: llm.Row | None = _find(rows, loop, peer.name)
    return row


def headline_table(
    results: Results, llm_rows: list[llm.Row], llm_cfg: llm.Config, most: int
) -> str:
    headers = [
        "loop",
        "limiter",
        "uncontended vs tokenbucket",
        "rate achieved",
        "over-admits",
        "CPU / 1k adm vs tokenbucket",
        "Jain / best (worst)",
        "out of order (worst)",
        f"{most:,} waiters: wall / ideal",
        "cancellation: throughput",
        "LLM: CPU vs Limiter",
        "LLM: over a limit",
    ]
    body = []
    for loop in _loops(
        list(
            dict.fromkeys(
                [r.loop for r in results.uncontended] + [r.loop for r in results.saturation]
            )
        )
    ):
        for peer in [p for p in peers.all_peers() if p.rated is not None]:
            if loop.is_trio and not peer.ours:
                continue
            if (why := peer.why_not("saturation", loop)) is not None:
                body.append([loop.name, peer.name, f"n/a: {why}", *[""] * 9])
                continue
            ours = peer.name == peers.TOKENBUCKET
            unc = _find(results.uncontended, loop.name, peer.name)
            sat = [r for r in results.saturation if r.loop == loop.name and r.name == peer.name]
            base = {
                r.tasks: r.cpu_ms_per_1k
                for r in results.saturation
                if r.loop == loop.name and r.name == peers.TOKENBUCKET
            }
            wai = _find(results.waiters, loop.name, peer.name, waiters=most)
            can = _find(results.cancellation, loop.name, peer.name)
            known = [r.fairness_norm for r in sat if not math.isnan(r.fairness_norm)]
            cells = [
                loop.name,
                peer.name,
                "not run"
                if unc is None
                else (
                    f"{unc.ns_per_op:,.0f} ns ({unc.ratio:.2f}x floor)"
                    if ours
                    else _x(unc.vs_tokenbucket)
                ),
                _span([r.achieved * 100 for r in sat], ".1f", "%") if sat else "not run",
                (f"{RED} yes" if any(r.over for r in sat) else "no") if sat else "not run",
                (
                    _span([r.cpu_ms_per_1k for r in sat], ".0f", " ms")
                    if ours
                    else _span(
                        [r.cpu_ms_per_1k / base[r.tasks] for r in sat if r.tasks in base],
                        ".1f",
                        "x",
                    )
                )
                if sat
                else "not run",
                (f"{min(known):.2f}" if known else "n/a") if sat else "not run",
                f"{max(r.out_of_order for r in sat):.1%}" if sat else "not run",
                "not run" if wai is None else _x(wai.ratio) + (" (capped)" if wai.capped else ""),
                "not run" if can is None else _throughput(can),
            ]
            if (why := peer.why_not("llm", loop)) is not None:
                cells += [f"n/a: {why}", ""]
            elif (row := _llm_row(llm_rows, loop.name, peer)) is None:
                cells += ["not run", "not run"]
            else:
                over = (
                    f"{RED} yes (steady)"
                    if row.over(llm_cfg, steady=True)
                    else "opening second only"
                    if row.over(llm_cfg, steady=False)
                    else "no"
                )
                cells += [_x(row.cpu_vs_baseline), over]
            body.append(cells)
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


def _image(plots: dict[str, str], label: str, alt: str) -> list[str]:
    return [f"![{alt}]({plots[label]})", ""] if label in plots else []


def _other_loops(plots: dict[str, str], kind: str, alt: str, shown: str) -> list[str]:
    images = [
        line
        for label in plots
        if label.startswith(kind + "_") and label != shown
        for line in _image(plots, label, f"{alt}, {label.split('_', 1)[1]}")
    ]
    return folded(f"{alt}: the other event loops", *images) if images else []


def report(results: Results, cfg: Any, plots: dict[str, str]) -> str:
    sat_cfg: saturation.Config = cfg.saturation
    llm_cfg: llm.Config = cfg.llm
    llm_rows = llm.summarise(results.llm, llm_cfg)
    first = next(iter(dict.fromkeys(r.loop for r in results.saturation)), "asyncio")
    parts = [
        "# Benchmarks: tokenbucket against the async Python limiters",
        "",
        describe(results.environment) + " Every figure comes from this one run on this one "
        "machine; ratios compare figures of the same run. The method is in `benchmarks/README.md`.",
        "",
    ]
    if cfg.mode == "quick":
        parts += [
            "**--quick run: sizes far too small to judge anything; it proves the suite runs.**",
            "",
        ]
    parts += ["## Summary", ""]
    met, checked, table = targets(results)
    if checked:
        parts += [
            f"tokenbucket's performance targets: {met} of {checked} met in this run.",
            "",
            table,
            "",
        ]
    if results.saturation or results.uncontended:
        parts += [
            "tokenbucket against each peer. Uncontended: the peer's cost per `acquire` over "
            "tokenbucket's. Rate, CPU, fairness, order: over the saturation runs; CPU per 1,000 "
            "admissions over tokenbucket's at the same task count. Jain / best: fairness of the "
            "tasks' admission counts over the best whole counts allow (1 = as even as possible).",
            "",
            headline_table(results, llm_rows, llm_cfg, max(cfg.waiters.counts)),
            "",
        ]
    parts += _image(plots, f"cpu_{first}", f"CPU per admission against waiting tasks, {first}")
    parts += _image(plots, f"timeline_{first}", f"Admissions over time under saturation, {first}")
    parts += _image(plots, f"latency_{first}", f"Wait latency under saturation, {first}")
    parts += ["## The limiters", ""]
    parts += folded(
        "How each limiter is configured and awaited, and how it waits",
        "\n".join(
            f"- **{p.name}** ({p.distribution}): {p.how}"
            + (f". Note: {p.caveat}" if p.caveat else "")
            + "."
            for p in peers.all_peers()
        ),
        "",
        WAITING,
    )
    if results.uncontended:
        parts += [
            "## 1. Uncontended acquire",
            "",
            "ns per `await acquire()` when capacity never runs out. vs floor: median over "
            "interleaved samples of the candidate over the floor (an awaited empty coroutine) "
            "timed just before and after it in the same loop.",
            "",
        ]
        parts += folded("The table", _table("uncontended", UNCONTENDED, results.uncontended))
    if results.saturation:
        floors = ", ".join(f"{n} {s * 1e6:.1f} us" for n, s in results.loop_floor.items())
        parts += [
            "## 2. Saturation",
            "",
            f"N tasks loop on `acquire()` of one limiter at {sat_cfg.rate:,.0f} units/s, burst "
            f"{sat_cfg.capacity:g}; {sat_cfg.duration:g} s measured after {sat_cfg.warmup:g} s. "
            f"Peak: most admissions certainly inside one window against rate x window + burst "
            f"({RED}: more than {saturation.SLACK_ADMISSIONS} over; window "
            f"{min(sat_cfg.window, sat_cfg.duration):g} s). Wait: call to resumption. "
            "Out of order: adjacent grants whose arrival order is inverted. Event-loop floor "
            f"(CPU per wake-up of a task sleeping 1 ms): {floors}.",
            "",
        ]
        parts += folded("The table", _table("saturation", SATURATION, results.saturation))
        for kind, alt in (
            ("cpu", "CPU per admission"),
            ("timeline", "Admissions over time"),
            ("latency", "Wait latency"),
        ):
            parts += _other_loops(plots, kind, alt, f"{kind}_{first}")
    if results.waiters:
        parts += [
            "## 3. Waiter scaling",
            "",
            f"n tasks each call `acquire()` once at {cfg.waiters.rate:,.0f} units/s, burst "
            f"{cfg.waiters.capacity:g}. Ideal: (n - burst) / rate; runs stop at "
            f"{cfg.waiters.cap_factor:g} x ideal + {cfg.waiters.cap_slack:g} s (capped). Memory: "
            f"{waiters.MEMORY_METHOD}; "
            + (
                "each run in a fresh process."
                if cfg.waiters.isolate
                else "all runs in one process (--quick)."
            ),
            "",
        ]
        parts += folded("The table", _table("waiters", WAITERS, results.waiters))
        parts += folded(
            "Plots",
            *[
                line
                for label in plots
                if label.startswith("waiters_")
                for line in _image(plots, label, f"Waiter scaling, {label[8:]}")
            ],
        )
    if results.cancellation:
        c = cfg.cancellation
        parts += [
            "## 4. Cancellation",
            "",
            f"{c.waiters:,} single-shot waiters at {c.rate:,.0f} units/s, burst {c.capacity:g}; "
            f"{c.delay * 1e3:g} ms after the last spawn the odd-numbered ones still waiting are "
            "cancelled. Throughput: survivors granted / (last grant - cancellation) / rate.",
            "",
        ]
        parts += folded("The table", _table("cancellation", CANCELLATION, results.cancellation))
    if results.llm:
        costs = results.costs
        parts += [
            "## 5. LLM composite workload",
            "",
            f"{llm_cfg.tasks} tasks against R = {llm_cfg.requests_per_second:,} requests/s and T = "
            f"{llm_cfg.tokens_per_second:,} tokens/s (rolling second); costs from a lognormal "
            f"sequence (mean {costs['mean']:.0f}, p99 {costs['p99']:.0f}); {llm_cfg.duration:g} s "
            f"measured after {llm_cfg.warmup:g} s, {llm_cfg.samples} round(s).",
            "",
            llm_reading(llm_rows, llm_cfg),
            "",
        ]
        patterns = "\n".join(f"- {p.name}: {p.llm_how}" for p in peers.all_peers() if p.llm)
        parts += folded("The table", _table("llm", llm_columns(llm_cfg), llm_rows), "", patterns)
    return "\n".join(parts)
