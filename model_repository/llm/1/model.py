"""Text chat on Triton: the `vlm` contract without images.

A front over `vlm_stream` (the same checkpoint, running batch and sessions) that refuses
images, also as image parts of a prompt (`serving.chat_front`). Contract and settings:
docs/models/llm.md.
"""

from __future__ import annotations

from serving.chat_front import ChatFront


class TritonPythonModel(ChatFront):
    text_only = True
