"""The transport's cost per call, counted: ``python benchmarks/transport_instructions.py``.

The calls of ``transport_bench.py`` (the ``openai`` SDK over ``httpx2``, bare and through
``AsyncLimitedTransport``, JSON and streamed, against the fake provider in a subprocess),
each client in a process of its own run under valgrind's cachegrind, which counts the
instructions the client runs and simulates its caches. Unlike CPU time, the counts do
not depend on what else the machine runs: a change of one percent of the transport's
cost shows. Needs ``valgrind`` (Debian: ``apt-get install valgrind``); about three
minutes on two cores. See benchmarks/README.md for the method and what to expect.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

WARMUP = 20  # calls before the counted ones (connections, caches)
# The simulated caches: 32 KiB first-level instruction and data caches and a 1 MiB
# second level (cachegrind's "last level"); a miss costs about 10 and 40 cycles.
CACHES = ["--I1=32768,8,64", "--D1=32768,8,64", "--LL=1048576,16,64"]
L1_MISS, LL_MISS = 10, 40


@dataclass(frozen=True)
class Counts:
    """Per call: instructions, first-level misses (instructions and data), second-level
    misses, and the estimate of cycles they add up to."""

    instructions: float
    l1_misses: float
    ll_misses: float

    @property
    def cycles(self) -> float:
        return self.instructions + L1_MISS * self.l1_misses + LL_MISS * self.ll_misses

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.instructions - other.instructions,
            self.l1_misses - other.l1_misses,
            self.ll_misses - other.ll_misses,
        )


def child(url: str, variant: str, stream: bool, calls: int) -> None:
    """The client: WARMUP and then ``calls`` calls, one after the other."""
    import httpx2
    import openai

    import tokenbucket as tb
    import transport_bench

    async def run() -> None:
        transport = None
        if variant == "limited":
            transport = tb.AsyncLimitedTransport(transport_bench.never_binding())
        http = httpx2.AsyncClient(transport=transport)
        client = openai.AsyncOpenAI(base_url=url, api_key="local", http_client=http)
        call = transport_bench.sdk_call(client, stream)
        for _ in range(WARMUP + calls):
            await call()
        await client.close()

    asyncio.run(run())


def counted(url: str, variant: str, stream: bool, calls: int) -> dict[str, int]:
    """cachegrind's totals for one client process."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "cachegrind.out")
        command = [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=yes",
            *CACHES,
            f"--cachegrind-out-file={out}",
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            url,
            variant,
            str(int(stream)),
            str(calls),
        ]
        # One hash seed for every process: with random ones, the same calls differ by
        # some 5 million instructions a process.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"the counted client failed:\n{done.stderr[-2000:]}")
        with open(out) as file:
            text = file.read()
    events = re.search(r"^events: (.*)$", text, re.M)
    summary = re.search(r"^summary: (.*)$", text, re.M)
    if events is None or summary is None:
        raise RuntimeError(f"cachegrind wrote no totals: {text[:200]!r}")
    return dict(zip(events[1].split(), map(int, summary[1].split()), strict=True))


def per_call(url: str, variant: str, stream: bool, calls: int, pool: Any) -> Counts:
    """The counts of ``calls`` calls, less those of a process that makes none (the
    start, the imports, the warm-up and the end), per call."""
    few, many = pool.map(lambda n: counted(url, variant, stream, n), [0, calls])
    extra = {key: many[key] - few[key] for key in many}
    return Counts(
        extra["Ir"] / calls,
        (extra["I1mr"] + extra["D1mr"] + extra["D1mw"]) / calls,
        (extra["ILmr"] + extra["DLmr"] + extra["DLmw"]) / calls,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        where, variant, streamed, count = argv[1:]
        child(where, variant, streamed == "1", int(count))
        return 0
    from _harness import arguments, markdown_table, progress, write_json
    from transport_bench import provider

    parser = arguments(__doc__)
    parser.add_argument("--calls", type=int, default=200, help="counted calls per client")
    options = parser.parse_args(argv)
    calls: int = options.calls if not options.quick else 10
    rows = []
    found: dict[str, Any] = {"calls": calls, "caches": CACHES}
    with provider() as url, ThreadPoolExecutor(2) as pool:
        for stream in (False, True):
            kind = "stream with usage" if stream else "JSON"
            progress(f"{kind}: bare")
            bare = per_call(url, "bare", stream, calls, pool)
            progress(f"{kind}: limited")
            limited = per_call(url, "limited", stream, calls, pool)
            added = limited - bare
            found[kind] = {"bare": vars(bare), "limited": vars(limited)}
            rows.append(
                [
                    f"openai + httpx2, {kind}",
                    f"{bare.instructions / 1e3:,.0f}k",
                    f"+{added.instructions / 1e3:,.1f}k",
                    f"{added.instructions / bare.instructions:+.1%}",
                    f"+{added.l1_misses / 1e3:,.2f}k",
                    f"+{added.ll_misses / 1e3:,.2f}k",
                    f"{added.cycles / bare.cycles:+.1%}",
                ]
            )
    headers = [
        "calls",
        "bare instructions",
        "added",
        "share",
        "added L1 misses",
        "added L2 misses",
        "share of cycles (est.)",
    ]
    print(f"Per call, over {calls} calls per client (cachegrind):\n")
    print(markdown_table(headers, rows, right=range(1, len(headers))))
    if options.json:
        write_json(options.json, found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
