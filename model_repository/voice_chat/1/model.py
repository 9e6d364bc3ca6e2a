"""Speech to speech on Triton (decoupled, BLS): a spoken question in, the answer spoken back.

`stt` transcribes the question, the chat model (`vlm_stream` by default) answers it as a
stream, and `tts` speaks each sentence of the answer as soon as it is complete, while the
chat model goes on. Responses: `transcript`, then `text` + `audio` per sentence, then the
final one with `finish_reason`. Contract: docs/models/voice_chat.md.
"""

from __future__ import annotations

from serving.voice import VoiceChatModel


class TritonPythonModel(VoiceChatModel):
    """All of it is `serving.voice`: the model has no engine of its own."""
