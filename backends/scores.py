"""Scores a sampler can always draw from, for every engine that samples (chat and Whisper).

`torch.multinomial` raises on a NaN, infinite or all-zero probability row, and a row's
probabilities turn NaN as soon as one score is +inf or every score is -inf or NaN: the whole
batched call then fails. Two things make such rows: dividing by a tiny temperature (refused by
`shared.params.check_temperature`) and a model that overflows (half precision, a hostile
input). `finite_scores` guards the draw itself: NaN counts as impossible, +inf as certain, and
each row is shifted so that its best score is 0, so dividing it by any allowed temperature
cannot overflow. The shift changes no probability.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor


def finite_scores(scores: torch.Tensor) -> torch.Tensor:
    """`scores` (rows x vocabulary, or one row) with no NaN or +inf and each row's best at 0.

    A row with no possible token at all (NaN or -inf everywhere) cannot be sampled from: it
    raises FloatingPointError, which fails that row's request alone (`serving.batch.isolate`).
    """
    negative = torch.tensor(-float("inf"), dtype=scores.dtype, device=scores.device)
    clean = torch.where(torch.isnan(scores), negative, scores)
    top = clean.max(dim=-1, keepdim=True).values
    if bool(torch.isneginf(top).any()):
        raise FloatingPointError("the model gave no finite score to any token of a row")
    certain = torch.where(torch.isposinf(clean), torch.zeros_like(clean), negative)
    return torch.where(torch.isposinf(top), certain, clean - top)


class FiniteScores(LogitsProcessor):
    """`finite_scores` as the last logits processor before `generate()`'s own warpers."""

    def __call__(self, input_ids: Any, scores: torch.Tensor) -> torch.Tensor:
        return finite_scores(scores)
