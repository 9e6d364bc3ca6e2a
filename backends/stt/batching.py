"""Grouping of request rows that can share one model call.

A batch from Triton may mix options that a single `generate()` call cannot honour row by row
(a task, a sampling temperature). Rows are grouped by those options, so each group is one
batched call and no request is ever served with another request's options.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def group_by_key(keys: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Indices of `keys` grouped by equal key, in first-seen order."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return groups
