"""One spoken turn: transcribe, chat, speak each sentence as soon as it is complete.

Framework-free: the three stages are async callables (`Stages`) that the Triton glue
(`serving.voice`) implements as BLS calls, and what the client receives goes through a
`Listener`. The order of what is heard is the order of the answer, but the work overlaps:
each complete sentence's speech starts at once, while the chat model goes on generating the
next, and is delivered as soon as it and every sentence before it are spoken.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Protocol

from shared.errors import ErrorCode
from shared.text import SentenceAssembler, is_speakable, strip_markdown


class StageError(Exception):
    """A stage failed this turn: `stage` is the model that failed, `message` its reason."""

    def __init__(self, stage: str, message: str, code: ErrorCode) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage, self.reason, self.code = stage, message, code


@dataclass(frozen=True)
class ChatPiece:
    """A piece of the answer; the last one carries the chat model's `finish_reason`."""

    text: str
    finish_reason: str | None = None


class Stages(Protocol):
    async def transcribe(self) -> str:
        """What the question's audio says."""
        ...

    def chat(self, question: str) -> AsyncGenerator[ChatPiece, None]:
        """The answer to `question`, in pieces as they are generated; closed early (aclose)
        when the turn stops before the answer's end."""
        ...

    async def speak(self, sentence: str) -> bytes:
        """`sentence` spoken, encoded."""
        ...


class Listener(Protocol):
    def transcript(self, text: str) -> None: ...

    def sentence(self, text: str, audio: bytes) -> None: ...


async def converse(
    stages: Stages,
    listener: Listener,
    cancelled: Callable[[], bool],
    max_sentence_chars: int,
) -> str:
    """Run one turn; the chat model's finish reason ("cancelled" if the client left first).

    A stage's failure raises its `StageError` (what was delivered before stays delivered,
    speech not yet delivered is dropped). After a cancel nothing more is started or
    delivered.
    """
    question = await stages.transcribe()
    if cancelled():
        return "cancelled"
    listener.transcript(question)
    spoken: asyncio.Queue[asyncio.Task[tuple[str, bytes]] | None] = asyncio.Queue()

    async def say(sentence: str) -> tuple[str, bytes]:
        return sentence, await stages.speak(sentence)

    async def deliver() -> None:  # in order, each as soon as it and those before are spoken
        while (task := await spoken.get()) is not None:
            text, audio = await task
            if cancelled():
                return
            listener.sentence(text, audio)

    def queue_speech(sentences: list[str]) -> None:
        for sentence in (strip_markdown(s).strip() for s in sentences):
            if is_speakable(sentence):
                spoken.put_nowait(asyncio.ensure_future(say(sentence)))

    delivery = asyncio.ensure_future(deliver())
    assembler = SentenceAssembler(max_sentence_chars)
    finish_reason = "stop"
    try:
        async with contextlib.aclosing(stages.chat(question)) as answer:
            async for piece in answer:
                if cancelled() or delivery.done():
                    break
                queue_speech(assembler.add(piece.text))
                finish_reason = piece.finish_reason or finish_reason
            else:
                queue_speech(assembler.flush())
        spoken.put_nowait(None)
        await delivery
    finally:
        if not delivery.done():
            delivery.cancel()
        while not spoken.empty():  # speech nobody will hear: drop it
            task = spoken.get_nowait()
            if task is not None:
                task.cancel()
    return "cancelled" if cancelled() else finish_reason
