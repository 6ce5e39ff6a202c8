"""Which items stand for a dataset when only some are used (a validation batch, a baseline's fit set)."""

from __future__ import annotations


def spread_items(start: int, stop: int, count: int) -> list[int]:
    """`count` indices evenly spaced over range(start, stop) (all of them when there are fewer), first
    included: a folder sorted by name is often sorted by source or kind (`digits-*` before `photo-*`),
    so its first items are not a sample of it."""
    total = max(stop - start, 0)
    if count >= total:
        return list(range(start, stop))
    return [start + (i * total) // count for i in range(count)]
