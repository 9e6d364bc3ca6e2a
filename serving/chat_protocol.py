"""What the chat engine model (`serving.chat`) and its unary fronts (`serving.chat_front`)
agree on: the inputs a front adds to its calls, and the outputs of a finished row.

Kept apart from both so that a front, which loads no torch, need not import the engine's glue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serving import tensors
from shared.chat import Completion

#: The input of a request that cancels another by its id: BLS callers on tritonserver 2.51
#: cannot cancel their calls (ResponseIterator.cancel() came later).
CANCEL_INPUT = "cancel_id"
#: The shortest request id that can be cancelled that way: a random token, not a guess.
CANCEL_ID_CHARS = 32
#: The input that refuses images for its request (`llm`, a front that reads text only).
TEXT_ONLY_INPUT = "text_only"
#: A finished row's outputs, in the order of `completion_tensors`.
OUTPUTS = ("text", "finish_reason", "prompt_tokens", "completion_tokens")


def completion_tensors(completions: Sequence[Completion]) -> list[Any]:
    """The outputs of a request: one row per completion."""
    return [
        tensors.bytes_tensor("text", [c.text for c in completions]),
        tensors.bytes_tensor("finish_reason", [c.finish_reason for c in completions]),
        tensors.int_tensor("prompt_tokens", [c.prompt_tokens for c in completions]),
        tensors.int_tensor("completion_tokens", [c.completion_tokens for c in completions]),
    ]
