"""The load-test suite behind `scripts/loadtest`: perf_analyzer against any Triton server, the
benchmarks that start their own local servers, and the per-model benchmark suites.

Modules, each named after what it holds, lowest first (a module imports only modules above it
in this list; tests/test_loadtest.py keeps the package free of import cycles):
  stats        percentiles and throughput from per-request timestamps (standard library only)
  machine      what the numbers depend on: CPU, memory, load, other processes' CPU share
  content      real request content made locally: speech clips, drawn images, sentences
  inputs       perf_analyzer input data (and client tensors) from a model's config + content
  server       a running server: readiness, model configs, statistics
  perf         one perf_analyzer run per concurrency level, and parsing of what it writes
  report       results.json / results.csv / summary.md / one PNG per model
  local        local tritonservers for the benchmarks: repository variants, stub memory
  inprocess    a model's own model.py run in-process (no server): the ceiling
  loadgen      an async closed-loop load generator for servers perf_analyzer cannot drive
  options      the options every command shares, and what is read from them
  results      a command's results from start to finish, and its progress lines
  setups       numeric setups (quantization:dtype) and what they change
  compare      a local HTTP server process; the load generator at every level
  run          `run`: against a running server
  benchmarks   `batching`, `quantization`, `overhead`, `numerics`
  baseline     `baseline`, against baseline_server.py (FastAPI + transformers, per request)
  peers        `peers`, against llama.cpp's llama-server
  stt/         `bench-stt` (its own package: see stt/__init__.py)
  tts, vlm     `bench-tts`, `bench-vlm`
  chat_memory  `chat-memory`
  build_peers  `build-peers`
  cli          the command line: imports every command, imported by none

Files run by other interpreters, by path, importing nothing of the project: baseline_server.py
(fastapi, uvicorn, transformers), stt/peer_worker.py and stt/plot_worker.py.
"""
