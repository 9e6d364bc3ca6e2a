"""The preprocessing and runtime library every engine and model builds on.

Audio, image and text handling, chat messages, phonemes, sessions, settings, safe checkpoint
loading, quantization (int4 included), per-request errors and log hygiene: plain Python that
imports neither `triton_python_backend_utils`, the glue in `serving/`, nor the engines in
`backends/`, so everything above can use it and it runs without a server.
"""
