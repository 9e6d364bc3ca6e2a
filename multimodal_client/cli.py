"""The command line: one subcommand per call, progress on stderr, results on stdout or in files.

    python -m multimodal_client transcribe question.wav [--timestamps]
    python -m multimodal_client chat "Tell me about Paris." [--image photo.png] [--stream]
    python -m multimodal_client speak "Hello there." -o hello.wav [--stream]
    python -m multimodal_client voice-chat question.wav -o answer.wav [--session me]

Every command takes --url (default localhost:8001, or localhost:8000 with --http), --timeout
(seconds per call) and --retries (attempts while the server is unavailable).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from multimodal_client.calls import join_wav
from multimodal_client.client import Client
from multimodal_client.errors import TritonError
from multimodal_client.retry import Retry


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m multimodal_client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--url", help="host:port (default localhost:8001; localhost:8000 with --http)")
    top.add_argument("--http", action="store_true", help="HTTP instead of gRPC (no streaming)")
    top.add_argument("--timeout", type=float, help="deadline of each call, in seconds")
    top.add_argument("--retries", type=int, default=5, help="attempts while unavailable")
    commands = top.add_subparsers(dest="command", required=True)

    transcribe = commands.add_parser("transcribe", help="speech to text")
    transcribe.add_argument("files", nargs="+", type=Path)
    transcribe.add_argument("--language")
    transcribe.add_argument("--task", choices=["transcribe", "translate"])
    transcribe.add_argument("--timestamps", action="store_true", help="print timed segments")

    chat = commands.add_parser("chat", help="ask the chat model")
    chat.add_argument("prompt")
    chat.add_argument("--image", action="append", default=[], type=Path)
    chat.add_argument("--stream", action="store_true", help="print the answer as it comes")
    chat.add_argument("--session", help="continue this conversation")
    chat.add_argument("--max-new-tokens", type=int)

    speak = commands.add_parser("speak", help="text to speech")
    speak.add_argument("text")
    speak.add_argument("-o", "--output", type=Path, required=True)
    speak.add_argument("--voice")
    speak.add_argument("--format", help="wav (default), flac, ogg, pcm_s16le, ...")
    speak.add_argument("--stream", action="store_true", help="sentence by sentence")

    voice = commands.add_parser("voice-chat", help="a spoken question, answered aloud")
    voice.add_argument("file", type=Path)
    voice.add_argument("-o", "--output", type=Path, required=True, help="the answer, as WAV")
    voice.add_argument("--session", help="continue this conversation")
    voice.add_argument("--system", help="an instruction for the chat model")
    voice.add_argument("--voice")
    voice.add_argument("--max-new-tokens", type=int)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    url = args.url or ("localhost:8000" if args.http else "localhost:8001")

    def retrying(attempt: int, error: TritonError, delay: float) -> None:
        progress(f"{url}: {error.message} (retry {attempt} in {delay:.1f} s)")

    retry = Retry(attempts=max(1, args.retries), on_retry=retrying)
    try:
        with Client(
            url, protocol="http" if args.http else "grpc", timeout=args.timeout, retry=retry
        ) as client:
            return COMMANDS[args.command](client, args)
    except TritonError as error:
        progress(f"error {error.code}: {error.message}")
        return 1


def transcribe(client: Client, args: argparse.Namespace) -> int:
    for path in args.files:
        if len(args.files) > 1:
            progress(f"{path}:")
        if args.timestamps:
            for seg in client.segments(path, language=args.language, task=args.task):
                print(f"[{seg['start']:7.2f} - {seg['end']:7.2f}] {seg['text']}")
        else:
            print(client.transcribe(path, language=args.language, task=args.task))
    return 0


def chat(client: Client, args: argparse.Namespace) -> int:
    options = {"images": args.image, "session_id": args.session}
    options["max_new_tokens"] = args.max_new_tokens
    if args.stream:
        for piece in client.chat(args.prompt, stream=True, **options):
            print(piece, end="", flush=True)
        print()
    else:
        print(client.chat(args.prompt, **options))
    return 0


def speak(client: Client, args: argparse.Namespace) -> int:
    if args.stream:
        chunks = []
        for chunk in client.speak(args.text, voice=args.voice, format=args.format, stream=True):
            chunks.append(chunk)
            progress(f"sentence {len(chunks)} spoken")
        audio = join_wav(chunks) if args.format in (None, "wav") else b"".join(chunks)
    else:
        audio = client.speak(args.text, voice=args.voice, format=args.format)
    args.output.write_bytes(audio)
    progress(f"wrote {args.output} ({len(audio)} bytes)")
    return 0


def voice_chat(client: Client, args: argparse.Namespace) -> int:
    started, parts = time.monotonic(), []
    for event in client.voice_chat(
        args.file,
        session_id=args.session,
        system=args.system,
        voice=args.voice,
        max_new_tokens=args.max_new_tokens,
    ):
        elapsed = f"[{time.monotonic() - started:5.1f} s]"
        if event.transcript is not None:
            progress(f"{elapsed} heard: {event.transcript}")
        elif event.speech is not None:
            parts.append(event.speech.audio)
            print(event.speech.text, flush=True)
            progress(f"{elapsed} sentence {len(parts)} spoken")
        elif event.finish_reason is not None:
            progress(f"{elapsed} done ({event.finish_reason})")
    if not parts:
        progress("the answer has no speech")
        return 1
    args.output.write_bytes(join_wav(parts))
    progress(f"wrote {args.output}")
    return 0


COMMANDS = {"transcribe": transcribe, "chat": chat, "speak": speak, "voice-chat": voice_chat}
