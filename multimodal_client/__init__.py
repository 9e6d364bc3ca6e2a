"""A Python client for the models this repository serves on Triton (and its CLI).

    from multimodal_client import Client

    with Client("localhost:8001") as client:  # gRPC; Client("localhost:8000", protocol="http")
        client.wait_ready()
        text = client.transcribe(Path("question.wav").read_bytes())
        for piece in client.chat("Tell me about Paris.", stream=True):
            print(piece, end="")
        wav = client.speak("Hello there.")
        for event in client.voice_chat(Path("question.wav").read_bytes()):
            ...

`AsyncClient` is the same over asyncio. Calls are retried with exponential backoff and
jitter when the server is unavailable or unreachable, never for a bad request; every call
takes a deadline. Errors are `TritonError`, carrying the status code and the server's message.
`python -m multimodal_client --help` is the command line. Docs: docs/client.md.
"""

from multimodal_client.aio import AsyncClient
from multimodal_client.calls import Speech, VoiceEvent
from multimodal_client.client import Client
from multimodal_client.errors import TritonError
from multimodal_client.retry import Retry

__all__ = ["AsyncClient", "Client", "Retry", "Speech", "TritonError", "VoiceEvent"]
