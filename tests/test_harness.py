"""The harness is strict where the real module is: misuse fails here as it fails in Triton."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.harness import pb_utils as mock
from tests.harness.runner import ModelHarness, pb_utils_module

CONTRACT = Path(__file__).parent / "contract_models"


def test_what_the_real_module_lacks_is_missing() -> None:
    pb = pb_utils_module()
    with pytest.raises(AttributeError):
        pb.Logger.log_warning("no such method in Triton")  # type: ignore[attr-defined]
    pb.Logger.log_warn("this one exists")
    assert pb.Logger.records[-1] == ("WARNING", "this one exists")


def test_the_shipped_pure_python_half_is_used_unchanged() -> None:
    pb = pb_utils_module()
    assert pb.__file__ == str(mock.shipped_module_path())
    encoded = pb.serialize_byte_tensor(np.array([b"ab", b"\x00c"], dtype=np.object_))
    assert pb.deserialize_bytes_tensor(encoded).tolist() == [b"ab", b"\x00c"]
    assert pb.triton_string_to_numpy("TYPE_FP32") == np.float32


def test_tensor_checks() -> None:
    pb = pb_utils_module()
    with pytest.raises(pb.TritonModelException, match="NumPy dtype is not supported"):
        pb.Tensor("t", np.array(["unicode"]))
    with pytest.raises(pb.TritonModelException, match="empty"):
        pb.Tensor("", np.zeros(1))
    strided = np.arange(10, dtype=np.float32)[::2]
    assert pb.Tensor("t", strided).as_numpy().flags["C_CONTIGUOUS"]


def test_response_sender_rules() -> None:
    pb = pb_utils_module()
    plain = pb.InferenceRequest([], decoupled=False).get_response_sender()
    with pytest.raises(pb.TritonModelException, match="COMPLETE_FINAL"):
        plain.send(pb.InferenceResponse())
    plain.send(pb.InferenceResponse(), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    with pytest.raises(pb.TritonModelException, match="has been closed"):
        plain.send(pb.InferenceResponse(), flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    stream = pb.InferenceRequest([], decoupled=True).get_response_sender()
    with pytest.raises(pb.TritonModelException, match="must be provided"):
        stream.send(None, flags=0)
    with pytest.raises(pb.TritonModelException, match="Unsupported flag"):
        stream.send(pb.InferenceResponse(), flags=7)


def test_metrics_follow_their_kind() -> None:
    pb = pb_utils_module()
    counter = pb.MetricFamily("errors_total", "errors", pb.MetricFamily.COUNTER).Metric(
        {"code": "x"}
    )
    counter.increment(2)
    assert counter.value() == 2
    with pytest.raises(pb.TritonModelException):
        counter.increment(-1)
    with pytest.raises(pb.TritonModelException):
        counter.set(0)


def test_wrong_number_of_responses_fails_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    with ModelHarness(CONTRACT / "contract") as harness:
        monkeypatch.setattr(harness.model, "execute", lambda requests: [])
        requests = [
            harness.request({"text": np.array([[b"a"]], dtype=np.object_)}) for _ in range(2)
        ]
        results = harness.execute(requests)
        assert [r.code for r in results] == ["INTERNAL", "INTERNAL"]


def test_initialize_args_are_all_strings_as_triton_passes_them() -> None:
    harness = ModelHarness(CONTRACT / "contract")
    args = harness.args()
    assert all(isinstance(v, str) for v in args.values())
    assert set(args) == {
        "model_config", "model_instance_kind", "model_instance_name",
        "model_instance_device_id", "model_repository", "model_version", "model_name",
    }  # fmt: skip


def test_model_import_sees_only_the_pure_python_half(tmp_path: Path) -> None:
    """As in Triton's auto-complete step: TritonError & co. do not exist yet at import time."""
    import shutil

    model_dir = tmp_path / "early"
    shutil.copytree(CONTRACT / "contract", model_dir)
    source = (model_dir / "1" / "model.py").read_text(encoding="utf-8")
    early = "INVALID = pb_utils.TritonError.INVALID_ARG\n"
    (model_dir / "1" / "model.py").write_text(source + early, encoding="utf-8")
    with pytest.raises(AttributeError, match="TritonError"):
        ModelHarness(model_dir).load()
    assert hasattr(pb_utils_module(), "TritonError"), "restored after the import"
