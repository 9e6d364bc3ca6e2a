"""Send audio files to the stt model and print the transcripts.

.venv/bin/python scripts/transcribe.py hello.wav [more.flac ...] [--url localhost:8000]
    [--grpc] [--language fr] [--task translate] [--timestamps]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument(
        "--url", help="server address (default localhost:8000, or :8001 with --grpc)"
    )
    parser.add_argument("--grpc", action="store_true")
    parser.add_argument("--model", default="stt")
    parser.add_argument("--language")
    parser.add_argument("--task")
    parser.add_argument("--timestamps", action="store_true")
    args = parser.parse_args(argv)

    if args.grpc:
        import tritonclient.grpc as client_module
    else:
        import tritonclient.http as client_module
    from tritonclient.utils import InferenceServerException

    url = args.url or ("localhost:8001" if args.grpc else "localhost:8000")
    client = client_module.InferenceServerClient(url)

    def tensor(name: str, value: np.ndarray, datatype: str):
        t = client_module.InferInput(name, list(value.shape), datatype)
        t.set_data_from_numpy(value)
        return t

    status = 0
    for path in args.files:
        inputs = [tensor("audio", np.array([[path.read_bytes()]], dtype=np.object_), "BYTES")]
        for name in ("language", "task"):
            if getattr(args, name):
                value = getattr(args, name).encode()
                inputs.append(tensor(name, np.array([[value]], dtype=np.object_), "BYTES"))
        if args.timestamps:
            inputs.append(tensor("return_timestamps", np.array([[True]]), "BOOL"))
        try:
            result = client.infer(args.model, inputs)
        except InferenceServerException as exc:
            print(f"{path}: error {exc.status()}: {exc.message()}", file=sys.stderr)
            status = 1
            continue
        print(result.as_numpy("text")[0, 0].decode("utf-8"))
        segments = json.loads(result.as_numpy("segments")[0, 0])
        for seg in segments or []:
            print(f"  [{seg['start']:7.2f} - {seg['end']:7.2f}] {seg['text']}")
    return status


if __name__ == "__main__":
    sys.exit(main())
