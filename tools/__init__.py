"""Development and operations tooling around the served models, never imported by them.

`tools.model_store` builds the local model store (the image runs it once, into its volume);
`tools.local_server` starts a real tritonserver for `./scripts/serve`, the tests and the
benchmarks; `tools.loadtest` is the load-test suite behind `./scripts/loadtest`.
"""
