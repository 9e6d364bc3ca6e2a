"""The OpenAI-compatible door: an ASGI service in front of the Triton server.

Most clients speak the OpenAI API, not KServe v2 tensors. This package translates the OpenAI
endpoints (chat completions, audio transcriptions and translations, speech) into gRPC calls
to the Triton models of this project (`vlm`, `vlm_stream`, `llm`, `stt`, `tts`,
`tts_stream`) with tritonclient's asyncio client. It holds no model code: everything a model
does happens in Triton, and every answer the door gives is built from what Triton returned.

`python -m openai_api` serves it (settings: `openai_api.settings`; page: docs/openai.md).
"""
