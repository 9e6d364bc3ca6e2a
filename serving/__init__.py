"""The Triton glue: what turns the engines in `backends/` into Triton Python models.

Layers run one way: `model_repository/<model>/1/model.py` -> `serving` -> `backends` ->
`shared`. This package and the `model.py` files are the only code that imports
`triton_python_backend_utils`; engines and the library run without a server, so they are
tested and benchmarked in-process. `tests/test_layers.py` holds the rule.

- `adapters`: the two base classes every `model.py` subclasses (`UnaryModel`, `StreamingModel`);
- `batch`, `streaming`: the unary and the decoupled execution patterns;
- `tensors`: request inputs to Python values, Python values to output tensors;
- `errors`: per-request errors as Triton errors, and their Prometheus counter;
- `metrics`: every Prometheus metric the models export, defined once;
- `chat`: the chat engine model (`vlm_stream`); `chat_front`: the unary fronts over it (`vlm`,
  `llm`, no weights of their own); `chat_protocol`: what the two agree on;
- `tts`: what the TTS models share on the Triton side; `voice`: `voice_chat`'s stages;
- `bls`: letting go of decoupled BLS calls without killing 2.51's stub;
- `protocols`: the shapes of the pb_utils objects this package passes around.
"""
