"""Redis benchmarks: admissions per second and round trips per admission, against peers.

``python benchmarks/redis_bench.py [--quick]``: 1, 10, 100 and 1,000 asyncio tasks each
loop on "acquire 1 unit" against ONE limit kept in Redis (the database is flushed before
every run), (a) generous (never binds; next to a floor, an EVALSHA of ``return 1``) and
(b) binding at 2,000 per second. Peers: ``limits`` (async ``RedisStorage``, polled) and
``pyrate-limiter`` (``RedisBucket``, ``StateBucket`` on a ``RedisStateStore``). Round
trips are counted three ways: ``backend.round_trips``, the commands the clients send, and
the server's ``INFO commandstats``. Then (c) the same limit shared by 8 processes x 1,000
tasks (``--workload processes``, ``--processes``, ``--tasks``): tokenbucket only. This
module writes the report; see benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from _harness import (
    SLACK_ADMISSIONS,
    Columns,
    arguments,
    describe,
    environment,
    markdown_table,
    number,
    write_json,
)
from redis_suite import processes
from redis_suite.limiters import (
    BATCHED,
    FLOOR,
    KEY_MARK,
    TB_BUCKET,
    TB_WINDOW,
    candidates,
    text,
)
from redis_suite.runs import FULL, QUICK, Config, RunResult, bench_run, per

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_URL = "redis://127.0.0.1:6379/14"
REGIMES = ("generous", "binding")
WORKLOADS = ("tasks", "processes")


def _peak(r: RunResult) -> str:
    if r.peak is None or r.allowed is None:
        return "n/a"
    grants = "" if r.grant_peak is None else f", grants {r.grant_peak:,}"
    return f"{r.peak:,} / {r.allowed:,.0f} (steady {r.steady_peak:,}{grants})"


LEADING: Columns = [
    ("limiter", lambda r: r.name),
    ("acquirers", lambda r: f"{r.acquirers:,}"),
    ("adm/s", lambda r: f"{r.per_second:,.0f}"),
]
GENEROUS: Columns = [("vs floor", lambda r: number(r.vs_floor, ".2f", "x"))]
COMMON: Columns = [
    ("round trips / adm (tb)", lambda r: "-" if r.round_trips is None else _per(r, r.round_trips)),
    ("commands / adm (client)", lambda r: _per(r, r.client_commands)),
    ("commands / adm (server)", lambda r: _per(r, r.server_commands) + " (!)" * (not r.agree)),
    ("Redis us / adm", lambda r: _per(r, r.server_usec, 1)),
    ("CPU ms / 1k adm", lambda r: _per(r, r.cpu_seconds * 1e6, 1)),
    ("conns", lambda r: str(r.connections)),
]


def _per(r: RunResult, value: float, digits: int = 3) -> str:
    return number(per(value, r.admitted), f".{digits}f")


def binding_columns(cfg: Config) -> Columns:
    return [
        ("% of limit", lambda r: number(r.achieved, ".1%")),
        (f"peak in {cfg.window:g} s / allowed", _peak),
        ("loop lag max ms", lambda r: number(r.lag_max * 1e3, ".1f")),
    ]


def table(runs: list[RunResult], columns: Columns) -> str:
    names = list(dict.fromkeys(r.name for r in runs))
    columns = LEADING + columns + COMMON
    rows = [
        [cell(r) for _, cell in columns]
        for r in sorted(runs, key=lambda r: (names.index(r.name), r.acquirers))
    ]
    return markdown_table([h for h, _ in columns], rows, range(1, len(columns)))


def _find(runs: list[RunResult], regime: str, name: str, n: int) -> RunResult | None:
    return next((r for r in runs if (r.regime, r.name, r.acquirers) == (regime, name, n)), None)


def targets(runs: list[RunResult], cfg: Config) -> list[list[str]]:
    """The targets for tokenbucket (generous limit), and never above (binding)."""
    checks: list[list[str]] = []

    def check(target: str, ok: bool, detail: str) -> None:
        checks.append([target, f"{'yes' if ok else 'NO'} ({detail})"])

    def counts(target: str, r: RunResult | None, ok: Callable[[float], bool]) -> None:
        """Judged on tokenbucket's own count and the commands its client sent (exact), and
        on the server's unless other clients were busy on it too."""
        if r is None or r.round_trips is None:
            return
        trips, sent, server = (
            per(v, r.admitted) for v in (r.round_trips, r.client_commands, r.server_commands)
        )
        others = "" if r.agree else " (other clients' commands included)"
        detail = f"backend.round_trips {trips:.4f}, client {sent:.4f}, server {server:.4f}{others}"
        met = ok(trips) and ok(sent) and (ok(server) or not r.agree)
        check(target, met, f"{detail}; {r.admitted:,} adm")

    most = max(cfg.acquirers)
    lone, crowd = _find(runs, "generous", TB_BUCKET, 1), _find(runs, "generous", TB_BUCKET, most)
    counts("lone acquirer: exactly 1 round trip per admission", lone, lambda v: abs(v - 1) < 0.005)
    crowded = f"{most:,} acquirers, generous limit: < 0.2 round trips per admission"
    counts(crowded, crowd, lambda v: v < 0.2)
    floor = _find(runs, "generous", BATCHED, most)
    for name in (TB_BUCKET, TB_WINDOW):
        r = _find(runs, "generous", name, most)
        if r is None or not r.admitted:
            continue
        cpu = r.cpu_seconds * 1e6 / r.admitted
        beside = ""
        if floor is not None and floor.admitted:
            bare = floor.cpu_seconds * 1e6 / floor.admitted
            beside = f"; the bare batched script {bare:.1f} us, {cpu / bare:.1f}x"
        check(
            f"{name} x{most:,}, generous limit: < 30 us of client CPU per admission",
            cpu < 30,
            f"{cpu:.1f} us{beside}",
        )
    bound = _find(runs, "binding", TB_BUCKET, most)
    if bound is not None and bound.round_trips is not None:
        trips = per(bound.round_trips, bound.admitted)
        check(
            f"{most:,} acquirers, binding limit: < 0.2 round trips per admission (for reference)",
            trips < 0.2,
            f"{trips:.3f}: {trips / 0.2:.1f}x the target; mean batch "
            f"{per(bound.admitted, bound.round_trips):.2f}",
        )
    never = f"reservations never above the limit (server clock, any {cfg.window:g} s)"
    for r in (r for r in runs if r.regime == "binding" and r.name.startswith("tokenbucket")):
        if r.grant_peak is not None and r.allowed:
            peak = f"{r.grant_peak:,} / {r.allowed:,.0f}"
            check(f"{r.name} x{r.acquirers:,}: {never}", r.grant_peak <= r.allowed, peak)
    return checks


def reading(runs: list[RunResult], cfg: Config) -> list[str]:
    """What this run's numbers say about peaks and tokenbucket's round trips."""
    lines = []
    over = [
        f"{r.name} x{r.acquirers:,}: {r.peak:,} / {r.allowed:,.0f} (steady {r.steady_peak:,}"
        + ("" if r.grant_peak is None else f", reserved {r.grant_peak:,}")
        + f", loop lag up to {r.lag_max * 1e3:.0f} ms)"
        for r in runs
        if r.peak is not None and r.allowed is not None and r.peak > r.allowed + SLACK_ADMISSIONS
    ]
    if over:
        lines.append(
            f"- Peaks above the limit (more than {SLACK_ADMISSIONS} admissions over, counted at "
            f"task resumption): {'; '.join(over)}. A limiter's decision and the "
            "resumption of the task it admits are at least one event-loop turn apart; when the "
            "loop falls behind, admissions due before a stall land after it, in a window that also "
            "holds those admitted on time. 'steady' counts from the measured interval on; "
            "'reserved' counts tokenbucket's reserved instants (server clock)."
        )
    if late := [
        f"{r.name} x{r.acquirers:,}: up to {ms['max']:.0f} ms (99th percentile {ms['p99']:.0f} "
        f"ms; in the measured interval {ms['interval_max']:.0f} and {ms['interval_p99']:.0f} ms)"
        for r in runs
        if r.regime == "binding" and r.lateness and r.lateness["max"] > 0.010
        for ms in [{key: value * 1e3 for key, value in r.lateness.items()}]
    ]:
        lines.append(
            "- tokenbucket's admissions came after the instants Redis reserved for them: "
            f"{'; '.join(late)}. The wait a reservation returns counts from the script's clock "
            "reading, at the start of the call, and each task sleeps it only once it resumes "
            "after the reply: admissions come late by the call's duration plus the time the loop "
            "spent resuming the tasks ahead of it in the batch (worst in the opening batch)."
        )
    batches = [
        f"{n:,} acquirers: {b.round_trips / b.admitted:.3f} round trips per admission = batches of "
        f"{b.admitted / b.round_trips:.2f}; a reserve call took {b.call_mean * 1e3:.2f} ms on "
        f"average, one in flight {b.call_busy or 0:.0%} of the time"
        for n in cfg.acquirers
        if n > 1 and (b := _find(runs, "binding", TB_BUCKET, n)) and b.round_trips and b.call_mean
    ]
    if batches:
        lines.append(
            f"- {TB_BUCKET}, binding limit: {'; '.join(batches)}. Each acquirer sleeps until its "
            f"own reserved instant, {1e3 / cfg.bound_rate:.2f} ms apart whatever the number of "
            "acquirers, and asks again at once: requests reach the backend one or two per loop "
            "turn. A batch gathers those that arrive while the previous call is in flight; when "
            "the next free instant is at least 2 ms ahead, the backend holds new requests for "
            "min(batch_delay = 10 ms, half the time left) and sends them together."
        )
    return lines


COUNTED = (
    "round trips / adm (tb): `backend.round_trips` (script calls). commands / adm (server): "
    "`INFO commandstats` deltas of the commands the clients sent (not those run inside "
    "scripts); no library pipelines here, so each is one round trip. (!): the server counted "
    "other clients' commands too. Redis us / adm: server time of those commands."
)
PEAKS = (
    "% of limit: mean over every rolling second inside the measured interval (plain count / "
    "time when shorter). peak: the most admissions (task resumptions) in any rolling second of "
    "the whole run; allowed is the limit (windows) or rate + burst (buckets); grants: the same, "
    "from tokenbucket's reserved instants on the server's clock."
)


def report(
    env: dict[str, Any],
    runs: list[RunResult],
    notes: list[str],
    cfg: Config,
    shared: list[processes.ProcResult] | None = None,
) -> str:
    parts = [
        f"# Redis benchmarks ({cfg.mode})",
        "",
        describe(env) + f" Redis {env['redis server']}, asyncio.",
        "",
    ]
    if generous := [r for r in runs if r.regime == "generous"]:
        parts += [
            f"## (a) Generous limit ({cfg.generous:.0e}/s, never binds), {cfg.free_duration:g} s "
            f"measured after {cfg.free_warmup:g} s warm-up",
            "",
            table(generous, GENEROUS),
            "",
        ]
    if binding := [r for r in runs if r.regime == "binding"]:
        parts += [
            f"## (b) Binding limit: {cfg.bound_rate:,} per {cfg.window:g} s (windows) or "
            f"{cfg.bound_rate:,}/s with a burst of {cfg.bound_burst} (buckets), "
            f"{cfg.bound_duration:g} s measured after {cfg.bound_warmup:g} s warm-up",
            "",
            table(binding, binding_columns(cfg)),
            "",
            PEAKS,
            "",
        ]
    if runs:
        parts += [COUNTED, ""]
    if shared:
        parts += processes.section(shared, cfg)
    parts += [*(f"Note: {note}" for note in notes), ""]
    if checks := targets(runs, cfg) + processes.targets(shared or [], cfg):
        parts += ["## Targets (tokenbucket)", ""]
        if cfg.mode == "quick":
            parts += ["--quick sizes are too small to judge the targets: indicative only.", ""]
        parts += [markdown_table(["target", "met"], checks), ""]
    if lines := reading(runs, cfg):
        parts += ["## Reading", "", *lines, ""]
    return "\n".join(parts)


async def _prepare(url: str, allow_flush: bool) -> str:
    """Check the server answers and the database holds only this benchmark's keys; return
    the server's version."""
    client: Any = aioredis.Redis.from_url(url)
    try:
        info = await client.info("server")
        foreign: list[str] = []
        async for key in client.scan_iter(count=1000):
            if KEY_MARK not in text(key) and len(foreign) < 3:
                foreign.append(text(key))
        if foreign and not allow_flush:
            raise SystemExit(
                f"{url} holds keys this benchmark did not write ({', '.join(foreign)}, ...); it "
                "flushes its database before every run. Use a spare database or --allow-flush."
            )
        return str(info.get("redis_version", "?"))
    finally:
        await client.aclose()


def _positive(value: str) -> int:
    if (number := int(value)) < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {value}")
    return number


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = arguments(__doc__)
    url = os.environ.get("TOKENBUCKET_BENCH_REDIS_URL", DEFAULT_URL)
    parser.add_argument("--url", default=url, help="database to FLUSH and use (%(default)s)")
    parser.add_argument("--allow-flush", action="store_true", help="even if others' keys are there")
    parser.add_argument("--only", action="append", metavar="TEXT", help="limiters named with TEXT")
    parser.add_argument("--regime", action="append", choices=REGIMES, help="repeatable")
    parser.add_argument("--acquirers", metavar="N,N,...", help="acquirer counts (1,10,100,1000)")
    parser.add_argument(
        "--workload",
        action="append",
        choices=WORKLOADS,
        help="tasks: N tasks in this process (a, b); processes: P processes x T tasks on one "
        "limit (c); repeatable, default both",
    )
    parser.add_argument("--processes", type=_positive, metavar="P", help="for (c): 8, --quick 2")
    parser.add_argument(
        "--tasks", type=_positive, metavar="T", help="per process (c): 1000, --quick 50"
    )
    parser.add_argument("--margin", type=float, metavar="S", help="the window's guard (c): 0.05")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.acquirers:
        cfg = dataclasses.replace(cfg, acquirers=tuple(int(n) for n in args.acquirers.split(",")))
    for option in ("processes", "tasks", "margin"):
        if (value := getattr(args, option)) is not None:
            cfg = dataclasses.replace(cfg, **{option: value})
    workloads = args.workload or WORKLOADS
    regimes = tuple(r for r in REGIMES if r in (args.regime or REGIMES))
    try:
        server = asyncio.run(_prepare(args.url, args.allow_flush))
    except (OSError, aioredis.RedisError) as exc:
        start = "start one (e.g. `redis-server`) or pass --url"
        print(f"cannot reach Redis at {args.url}: {exc}\n{start}", file=sys.stderr)
        return 2
    found, notes = candidates()
    if args.only:
        found = [c for c in found if c.name == FLOOR or any(t in c.name for t in args.only)]
    command = " ".join(["python benchmarks/redis_bench.py", *argv])
    env = environment(cfg.mode, command, ["redis", "limits", "pyrate-limiter"])
    env |= {"redis server": server, "url": args.url, "redis-py": env["versions"]["redis"]}
    runs: list[RunResult] = []
    for regime in regimes if "tasks" in workloads else ():
        for n in cfg.acquirers:  # acquirer counts outermost: one count's runs close in time
            floor = None
            for candidate in (c for c in found if regime in c.regimes):
                result = bench_run(candidate, args.url, cfg, regime, n)
                floor = result if candidate.name == FLOOR else floor
                if floor is not None and regime == "generous":
                    result.vs_floor = result.per_second / floor.per_second
                runs.append(result)
    if dropped := [r for r in runs if r.reconnects > 0]:
        which = (f"{r.name} x{r.acquirers} {r.regime}: {r.reconnects}" for r in dropped)
        notes.append("connections re-opened during the interval: " + ", ".join(which))
    if warned := [r for r in runs if r.warnings_total]:
        which = (
            f"{r.name} x{r.acquirers} {r.regime}: {r.warnings} in the interval, "
            f"{r.warnings_total} in all ({'; '.join(r.warning_messages)})"
            for r in warned
        )
        notes.append("tokenbucket logged warnings: " + ", ".join(which))
    shared = []
    if "processes" in workloads:
        shared = processes.bench_processes(args.url, cfg, regimes, args.only)
    print(report(env, runs, notes, cfg, shared))
    if args.json:
        runs_json = [asdict(r) for r in runs]
        shared_json = [asdict(r) | {"cpu_per_admission": r.cpu_per_admission} for r in shared]
        data = {"environment": env, "config": asdict(cfg), "runs": runs_json, "notes": notes}
        checks = targets(runs, cfg) + processes.targets(shared, cfg)
        data |= {"processes": shared_json, "targets": checks, "reading": reading(runs, cfg)}
        write_json(args.json, data)
    return 0
