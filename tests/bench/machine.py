"""How fast this machine runs plain Python: one figure printed with every benchmark run.

Sessions get different machines of the same size (2 cores), and on 2026-12-05 one ran the
same code about twice as slowly as the machine of the day before (``poll_cost.py --pg``:
0.95 / 1.35 ms per idle poll against 0.374 / 0.701). A run's numbers only compare with
another's when the machines do; this figure says whether they do.

``speed_ms()`` times a fixed pure-Python loop (``sum(i * i for i in range(10_000))``,
the best of 50: the least disturbed by whatever else runs) in one process, before the
benchmark starts its server. Smaller is faster; 2026-12-05's machine: about 1.0 ms.
"""

from __future__ import annotations

import time

LOOP = "sum(i * i for i in range(10_000)), best of 50"


def speed_ms(rounds: int = 50) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        sum(i * i for i in range(10_000))
        best = min(best, time.perf_counter() - started)
    return best * 1000


def describe(ms: float) -> str:
    return f"machine speed {ms:.2f} ms ({LOOP}; smaller is faster)"
