"""The tightest ``max_memory`` the planner accepts for a call, and the peak the call reaches under it.

At the planner's own limit every byte it reserves matters, so a term it leaves out (a copy alive
longer than planned, the parts of a split) shows as a peak above the budget; a generous budget hides it.
"""

from __future__ import annotations

from collections.abc import Callable

from depass_tl.errors import DePassError
from depass_tl.memory import PeakMemory


def tightest_budget(call: Callable[[int], object], upper: int, resolution: int = 4096) -> tuple[int, int]:
    """``(budget, peak)``: the smallest budget (to ``resolution`` bytes) below ``upper`` under which
    ``call(budget)`` is not refused with a :class:`DePassError`, and the call's peak tensor memory there."""
    lo, hi, peak = 0, upper, -1
    with PeakMemory() as mem:
        call(upper)
    peak = mem.peak
    while hi - lo > resolution:
        mid = (lo + hi) // 2
        try:
            with PeakMemory() as mem:
                call(mid)
        except DePassError:
            lo = mid
        else:
            hi, peak = mid, mem.peak
    return hi, peak
