"""Preprocessing and Triton-helper library shared by every served model.

Everything here except `shared.triton` is plain Python (no `triton_python_backend_utils`), so the
engines in `backends/` and the tests can use it without a server.
"""
