"""Every benchmark, against every peer, in one run: a Markdown report and PNG plots.

Usage::

    pip install -e '.[bench]'
    python benchmarks/run_all.py --out docs/benchmarks   # full run, about a quarter hour
    python benchmarks/run_all.py --quick                  # smoke run (CI), seconds

Workloads (``workloads/``), on asyncio and uvloop, tokenbucket also on trio, against the
peers of ``peers.py``: uncontended acquire, saturation, waiter scaling, cancellation and
the LLM composite. The report states the machine, the versions and the date; every ratio
in it compares figures of this one run. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass

import peers
from _harness import arguments, environment, loops, progress, write_json
from report import Results, report
from workloads import cancellation, llm, saturation, uncontended, waiters

WORKLOADS = ("uncontended", "saturation", "waiters", "cancellation", "llm")
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Config:
    """The sizes of every workload: each module's ``FULL`` or ``QUICK``."""

    mode: str
    uncontended: uncontended.Config
    saturation: saturation.Config
    waiters: waiters.Config
    cancellation: cancellation.Config
    llm: llm.Config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = arguments(__doc__)
    out = os.path.join(HERE, "results", "run_all")
    parser.add_argument("--out", metavar="DIR", default=out, help="for report.md and the PNGs")
    parser.add_argument("--only", action="append", choices=WORKLOADS, help="repeatable")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    sizes = (uncontended, saturation, waiters, cancellation, llm)
    cfg = Config(mode, *(getattr(module, mode.upper()) for module in sizes))
    if args.worker:
        return waiters.worker_main(cfg.waiters)
    chosen = set(args.only or WORKLOADS)
    command = " ".join(["python benchmarks/run_all.py", *argv])
    env = environment(cfg.mode, command, [*peers.distributions(), "uvloop", "trio"])
    results = Results(env, asdict(cfg))
    series = saturation.Series()
    kinds = loops()
    started = time.monotonic()
    for loop in kinds if "uncontended" in chosen else []:
        results.uncontended += uncontended.measure(loop, cfg.uncontended)
    for loop in kinds if "saturation" in chosen else []:
        results.loop_floor[loop.name], rows = saturation.measure(loop, cfg.saturation, series)
        results.saturation += rows
    if "waiters" in chosen:
        worker = [sys.executable, os.path.abspath(__file__), "--worker", *["--quick"] * args.quick]
        results.waiters = waiters.measure(kinds, cfg.waiters, worker)
    for loop in kinds if "cancellation" in chosen else []:
        results.cancellation += cancellation.measure(loop, cfg.cancellation)
    if "llm" in chosen:
        results.llm = llm.measure(kinds, cfg.llm)
        results.costs = llm.cost_summary(llm.token_costs(cfg.llm))
    progress(f"[{time.monotonic() - started:.0f} s] measured")

    os.makedirs(args.out, exist_ok=True)
    plots: dict[str, str] = {}
    if not args.no_plots:
        import plots as drawing  # matplotlib is imported only here

        plots = drawing.draw_all(results, series, args.out, args.quick)
    text = report(results, cfg, plots)
    with open(os.path.join(args.out, "report.md"), "w", encoding="utf-8") as file:
        file.write(text)
    print(text)
    if args.json:
        write_json(args.json, asdict(results))
    progress(f"done in {time.monotonic() - started:.0f} s; report in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
