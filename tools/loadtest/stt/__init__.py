"""`scripts/loadtest bench-stt`: the speech-to-text benchmark, split by what it measures.

  cli           its options, and main: the phases in order, results.json/.md/.png
  measure       measurements retried once when others took the CPU; phases; corpus WER
  inprocess     the engine without a server: batch sizes, the encoder/decoder split
  served        tritonserver + perf_analyzer: batching on vs. off, quantizations
  peer          the CTranslate2 peer driven in its own interpreter
  report        the ratios and results.md
  peer_worker   run as a file by the peer's interpreter (imports nothing of the project)
  plot_worker   run as a file by any interpreter with matplotlib (imports nothing of the project)

This file imports nothing, so importing one module does not import the others.
"""
