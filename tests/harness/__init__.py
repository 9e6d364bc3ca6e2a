"""A strict stand-in for tritonserver 2.51's Python backend, to unit-test `model.py` files.

    from tests.harness.runner import ModelHarness, ServerRejected

    with ModelHarness("model_repository/stt", parameters={"model_path": "..."}) as stt:
        result = stt.infer({"audio": np.array([[wav_bytes]], dtype=object)})
        assert result.error is None, result.message

Modules:
  runner         ModelHarness (load, request, execute, infer, cancel, logs, metric, link for
                 BLS) and Result
  server         HarnessServer: several models by name, reaching each other over BLS
  pb_utils       the mock `triton_python_backend_utils` (the shipped .py + the C++ half)
  pb_logging     Logger; pb_metrics: MetricFamily and Metric
  config         config.pbtxt completed and written as the server hands it to initialize()
  validation     the server's checks before a request reaches the model; batcher rules
  errors         ServerRejected (DecoupledOverUnary, UnknownModel), UnrealisticBatch, ClientWouldHang, ProtocolViolation, ServerCrash
  server_fixture a real tritonserver for tests (server_fixture, running_server)
  clients        comparable views of harness results and real client answers

Every rule here was read in python_backend/core r24.10 and checked against the real server;
tests/test_harness_contract.py keeps checking that both agree.
"""
