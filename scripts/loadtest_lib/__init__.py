"""The load-test suite behind `scripts/loadtest`: perf_analyzer against any Triton server.

Modules, each named after what it holds:
  content    real request content made locally: speech clips, drawn images, sentences
  inputs     perf_analyzer input data (and client tensors) from a model's config + content
  server     a running server: readiness, model configs, statistics
  perf       one perf_analyzer run per concurrency level, and parsing of what it writes
  stats      percentiles and throughput from per-request timestamps (standard library only)
  machine    what the numbers depend on: CPU, memory, load, other processes' CPU share
  report     results.json / results.csv / summary.md / one PNG per model
  local      local tritonservers for the benchmarks: repository variants, stub memory
  inprocess  a model's own model.py run in-process (no server): the ceiling
  loadgen    an async closed-loop load generator for servers perf_analyzer cannot drive
  cli        the command line, and `run` (against a running server)
  benchmarks batching, quantization, overhead, baseline (their own local servers)

This file imports nothing: scripts/bench_stt.py's worker modes run in other interpreters
and import `stats` alone.
"""
