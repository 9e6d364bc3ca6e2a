"""A batch run in groups that stay within a budget of what its parsed requests hold.

`serving.batch.run_batch` parses every request of a batch before the one engine call, so what
parsing makes (an `stt` request's decoded audio) is held for the whole batch at once: 16
requests of 30 minutes would hold 16 times the decoded audio. `in_groups` cuts the batch into
groups whose weights, read cheaply before parsing (an audio file's header), add up to at most
the budget, and runs them one after the other: a group's rows are released before the next
group is parsed. When every request fits, the batch runs as one group, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

Request = TypeVar("Request")
Response = TypeVar("Response")


def in_groups(
    requests: Sequence[Request],
    weigh: Callable[[Request], float],
    budget: float,
    run: Callable[[list[Request]], Sequence[Response]],
) -> list[Response]:
    """`run` on groups of `requests` (`budget_groups` of their weights), one after the
    other; the responses in request order. `weigh` must not raise (a request it cannot read
    weighs 0: its parse refuses it). A request heavier than the budget runs alone."""
    weights = [weigh(request) for request in requests]
    responses: dict[int, Response] = {}
    for group in budget_groups(weights, budget):
        done = run([requests[i] for i in group])
        responses.update(zip(group, done, strict=True))
    return [responses[i] for i in range(len(requests))]


def budget_groups(weights: Sequence[float], budget: float) -> list[list[int]]:
    """The indices of `weights` in groups whose weights add up to at most `budget`, packed
    lightest first (small requests share a group, heavy ones do not hold them back), each
    group in arrival order; one heavier than the budget is a group of its own."""
    groups: list[list[int]] = []
    total = 0.0
    for index in sorted(range(len(weights)), key=lambda i: weights[i]):
        if groups and total + weights[index] <= budget:
            groups[-1].append(index)
            total += weights[index]
        else:
            groups.append([index])
            total = weights[index]
    return [sorted(group) for group in groups]
