"""The per-request stack users run today: FastAPI + transformers, one request at a time.

Written for the benchmark (`scripts/loadtest baseline`), as a typical hand-rolled model server
looks: the checkpoint loaded once with transformers, one POST endpoint, every request run on
its own (a lock: one model call at a time, no batching), float32 weights. The same local
checkpoint directory the Triton model loads (safetensors only, no remote code). Run by path,
by any Python with fastapi, uvicorn and transformers (--baseline-python): it imports nothing of
the project.

    .venv/bin/python tools/loadtest/baseline_server.py --task stt \
        --model-dir model_store/whisper-tiny.en --port 8100
    POST /v1/infer  JSON with the Triton model's input names, bytes as base64:
        stt: {"audio": b64}                      -> {"text": ...}
        llm: {"prompt": str, "max_new_tokens"}   -> {"text": ..., "completion_tokens": n}
        vlm: {"prompt": str, "images": [b64...], "max_new_tokens"} -> the same
        tts: {"text": str}                       -> {"audio": b64 WAV, "sample_rate": n}
    GET /health -> 200 once the model is loaded
"""

from __future__ import annotations

import argparse
import base64
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch
import uvicorn
from fastapi import FastAPI, HTTPException

PRETRAINED = {"local_files_only": True, "use_safetensors": True}


class SpeechToText:
    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForSpeechSeq2Seq.from_pretrained(model_dir, **PRETRAINED).eval()
        self.rate = int(self.processor.feature_extractor.sampling_rate)

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        samples, rate = sf.read(io.BytesIO(base64.b64decode(body["audio"])), dtype="float32")
        if samples.ndim > 1:
            samples = samples.mean(axis=1)
        if rate != self.rate:
            samples = soxr.resample(samples, rate, self.rate)
        features = self.processor(samples, sampling_rate=self.rate, return_tensors="pt")
        tokens = self.model.generate(features.input_features)
        return {"text": self.processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()}


class TextGeneration:
    """llm (text only) and vlm (prompt + images) through the processor's chat template."""

    def __init__(self, model_dir: Path, with_images: bool) -> None:
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )

        self.with_images = with_images
        if with_images:
            self.processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
            self.tokenizer = self.processor.tokenizer
            model_class: Any = AutoModelForImageTextToText
        else:
            self.processor = self.tokenizer = AutoTokenizer.from_pretrained(
                model_dir, local_files_only=True
            )
            model_class = AutoModelForCausalLM
        self.model = model_class.from_pretrained(model_dir, **PRETRAINED).eval()

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        images = [
            Image.open(io.BytesIO(base64.b64decode(item))).convert("RGB")
            for item in body.get("images") or []
        ]
        content: list[dict[str, Any]] = [{"type": "image"} for _ in images]
        content.append({"type": "text", "text": body["prompt"]})
        if self.with_images:
            messages = [{"role": "user", "content": content}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = self.processor(text=text, images=images or None, return_tensors="pt")
        else:
            messages = [{"role": "user", "content": body["prompt"]}]
            if self.tokenizer.chat_template:
                text = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            else:
                text = body["prompt"]
            inputs = self.tokenizer(text, return_tensors="pt")
        tokens = self.model.generate(
            **inputs, max_new_tokens=int(body.get("max_new_tokens", 64)), do_sample=False
        )
        new = tokens[0, inputs["input_ids"].shape[1] :]
        return {
            "text": self.tokenizer.decode(new, skip_special_tokens=True),
            "completion_tokens": int(new.shape[0]),
        }


class TextToSpeech:
    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForTextToWaveform, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModelForTextToWaveform.from_pretrained(model_dir, **PRETRAINED).eval()
        self.rate = int(self.model.config.sampling_rate)

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = self.tokenizer(body["text"], return_tensors="pt")
        waveform = self.model(**inputs).waveform[0].float().numpy()
        buffer = io.BytesIO()
        sf.write(buffer, np.clip(waveform, -1, 1), self.rate, format="WAV", subtype="PCM_16")
        return {"audio": base64.b64encode(buffer.getvalue()).decode(), "sample_rate": self.rate}


def build(task: str, model_dir: Path) -> Any:
    if task == "stt":
        return SpeechToText(model_dir)
    if task in ("llm", "vlm"):
        return TextGeneration(model_dir, with_images=task == "vlm")
    if task == "tts":
        return TextToSpeech(model_dir)
    raise ValueError(f"unknown task {task!r}")


def app_for(handler: Any) -> FastAPI:
    app = FastAPI(title="per-request baseline")
    lock = threading.Lock()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/infer")
    def infer(body: dict[str, Any]) -> dict[str, Any]:
        # A plain (sync) endpoint runs in FastAPI's thread pool; the lock makes it one model
        # call at a time, as a per-request server without a batcher effectively is.
        try:
            with lock, torch.inference_mode():
                return handler(body)
        except (KeyError, ValueError, sf.LibsndfileError) as exc:
            raise HTTPException(status_code=400, detail=f"{type(exc).__name__}: {exc}") from exc

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["stt", "llm", "vlm", "tts"], required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    handler = build(args.task, args.model_dir)
    uvicorn.run(app_for(handler), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
