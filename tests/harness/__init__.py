"""A strict stand-in for Triton's Python backend, to unit-test `model.py` files without a server.

`pb_utils.build_module()` makes the `triton_python_backend_utils` module the way the real stub
does: the shipped pure-Python part is executed as it is, and the C++ part (Tensor, requests,
responses, errors, logging, metrics) is provided by classes that follow the real semantics.
`runner.ModelHarness` loads a model directory as Triton does and drives `execute()`.
"""
