"""Text chat on Triton: the vision-language engine and contract, without images.

It serves the same checkpoint as `vlm` (a separate instance with its own settings): the same
inputs and outputs less `images`; image parts in a prompt are refused. Contract and settings:
docs/models/llm.md.
"""

from __future__ import annotations

from backends.chat.settings import chat_params
from serving.chat import UnaryChatModel


class TritonPythonModel(UnaryChatModel):
    params = chat_params("smolvlm-256m-smollm2", images=False)
