"""Vision-language chat on Triton: images and text in, text out, one response per request.

A front over `vlm_stream`, which holds the weights, the running batch and the sessions: each
row is one stream there, joined into this request's response (`serving.chat_front`).
Contract and settings: docs/models/vlm.md.
"""

from __future__ import annotations

from serving.chat_front import ChatFront


class TritonPythonModel(ChatFront):
    text_only = False
