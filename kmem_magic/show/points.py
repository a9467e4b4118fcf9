"""Curves as compact data for a browser or an SVG: bounded in size whatever the cell's length.

>>> t, v = downsample(list(range(1000)), [i % 7 for i in range(1000)], budget=100)
>>> len(t) <= 100 and max(v) == 6 and min(v) == 0
True
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

BUDGET = 400  # points per curve in the final view: more than a panel has pixels to show


def downsample(t_s: Sequence[float], values: Sequence[Optional[int]],
               budget: int = BUDGET) -> Tuple[List[float], List[Optional[int]]]:
    """At most ``budget`` points of a curve: in each of ``budget // 2`` time buckets its lowest
    and highest reading, in time order, so that spikes and dips both survive; unknown readings
    are dropped (a curve shows what was read)."""
    known = [(t, v) for t, v in zip(t_s, values) if v is not None]
    if len(known) <= budget:
        return [t for t, _ in known], [v for _, v in known]
    buckets = max(budget // 2, 1)
    step = len(known) / buckets
    out: List[Tuple[float, int]] = []
    for b in range(buckets):
        chunk = known[int(b * step):int((b + 1) * step)]
        if not chunk:
            continue
        low, high = min(chunk, key=lambda p: p[1]), max(chunk, key=lambda p: p[1])
        out += sorted({low, high})
    return [t for t, _ in out], [v for _, v in out]


def packed(t_s: Sequence[float], values: Sequence[Optional[int]]) -> List[list]:
    """``[t in ms, value in KiB]`` as two integer lists: about a third of the JSON of seconds
    and bytes, and exact to a millisecond and a KiB, finer than any panel draws."""
    return [[round(t * 1000) for t in t_s],
            [None if v is None else round(v / 1024) for v in values]]
