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
from _harness import environment, loops, progress, write_json
from report import Results, report
from workloads import cancellation, llm, saturation, uncontended, waiters

WORKLOADS = ("uncontended", "saturation", "waiters", "cancellation", "llm")
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Config:
    mode: str
    uncontended: uncontended.Config
    saturation: saturation.Config
    waiters: waiters.Config
    cancellation: cancellation.Config
    llm: llm.Config


def config(mode: str) -> Config:
    """The sizes of every workload for ``mode`` ("full" or "quick")."""
    sizes = (uncontended, saturation, waiters, cancellation, llm)
    return Config(mode, *(getattr(module, mode.upper()) for module in sizes))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run with small sizes")
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=os.path.join(HERE, "results", "run_all"),
        help="write report.md and the PNG plots here (default: benchmarks/results/run_all)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument(
        "--only", action="append", choices=WORKLOADS, help="run only this workload (repeatable)"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = config("quick" if args.quick else "full")
    if args.worker:
        return waiters.worker_main(cfg.waiters)
    chosen = set(args.only or WORKLOADS)
    command = " ".join(["python benchmarks/run_all.py", *argv])
    env = environment(cfg.mode, command, [*peers.distributions(), "uvloop", "trio"])
    results = Results(env, asdict(cfg))
    series = saturation.Series()
    kinds = loops()
    started = time.monotonic()

    def done(workload: str) -> None:
        progress(f"[{time.monotonic() - started:.0f} s] {workload} done")

    if "uncontended" in chosen:
        for loop in kinds:
            results.uncontended += uncontended.measure(loop, cfg.uncontended)
        done("uncontended")
    if "saturation" in chosen:
        for loop in kinds:
            floor, rows = saturation.measure(loop, cfg.saturation, series)
            results.loop_floor[loop.name] = floor
            results.saturation += rows
        done("saturation")
    if "waiters" in chosen:
        worker = [sys.executable, os.path.abspath(__file__), "--worker"]
        results.waiters = waiters.measure(
            kinds, cfg.waiters, worker + (["--quick"] if args.quick else [])
        )
        done("waiters")
    if "cancellation" in chosen:
        for loop in kinds:
            results.cancellation += cancellation.measure(loop, cfg.cancellation)
        done("cancellation")
    if "llm" in chosen:
        results.llm = llm.measure(kinds, cfg.llm)
        results.costs = llm.cost_summary(llm.token_costs(cfg.llm))
        done("llm")

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
