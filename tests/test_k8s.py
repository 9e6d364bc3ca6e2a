"""deploy/k8s/: the manifests validate offline, hold together, and the Deployment runs.

Everywhere: every manifest of the base, of each overlay as kustomize renders it (where
kubectl is installed), and the KServe predictor's pod validate strictly against the
Kubernetes schemas (kubernetes-validate, offline); the Services, the PodDisruptionBudget and
the HPA find the Deployment's pods and ports; the HPA's metric is the one the
prometheus-adapter rule makes, from metrics Triton exports; the scrape job keeps the labels
the adapter maps to pods.

With the image (`./scripts/image test tests/test_k8s.py`): `podman kube play --network host`
runs the base Deployment with the built image (the store a host directory instead of the
init container's download), the test waits for Triton's readiness and sends a real request to
every model, and `podman kube down` removes it.
"""

from __future__ import annotations

import copy
import io
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT, TRITON_IMAGE
from tests.speech import SENTENCES, encode, espeak_available, speak
from tests.stack import answers, ports_taken, wait_for
from tests.test_prometheus_rules import TRITON_METRICS

K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
#: The oldest Kubernetes these manifests are for, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
KUBECTL = shutil.which("kubectl")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def base_resources() -> dict[str, dict[str, Any]]:
    """kind -> resource of the base (one of each kind but Service), by kustomization order."""
    kustomization = documents(BASE / "kustomization.yaml")[0]
    resources = [documents(BASE / name)[0] for name in kustomization["resources"]]
    return {f"{r['kind']}/{r['metadata']['name']}": r for r in resources}


def validate(resource: dict[str, Any]) -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(resource, version, strict=True)


def test_every_base_manifest_validates() -> None:
    resources = base_resources()
    assert set(resources) == {
        "Deployment/triton-multimodal",
        "Service/triton-multimodal",
        "Service/triton-multimodal-grpc",
        "PodDisruptionBudget/triton-multimodal",
        "HorizontalPodAutoscaler/triton-multimodal",
    }
    for resource in resources.values():
        validate(resource)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (kustomize) is not installed")
@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_each_overlay_renders_and_validates(overlay: str) -> None:
    assert KUBECTL is not None
    rendered = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    resources = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(resources) == len(base_resources())
    for resource in resources:
        validate(resource)
    (deployment,) = [r for r in resources if r["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert {c["image"] for c in pod["initContainers"] + pod["containers"]} == {
        f"triton-multimodal:{overlay}"
    }
    limits = server["resources"]["limits"]
    if overlay == "gpu":
        assert limits["nvidia.com/gpu"] == 1 and "--model-config-name=gpu" in server["args"]
    else:
        assert "nvidia.com/gpu" not in limits and server["args"][0] == "serve"


def test_the_deployment_runs_as_deployed() -> None:
    pod = base_resources()["Deployment/triton-multimodal"]["spec"]["template"]
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
    (init,) = spec["initContainers"]
    (server,) = spec["containers"]
    assert init["args"] == ["build-store"] and init["image"] == server["image"]
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts["/models"]["readOnly"] and not init["volumeMounts"][0].get("readOnly")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    for container in (init, server):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    probes = {name: server[name]["httpGet"] for name in ("startupProbe", "readinessProbe")}
    assert all(p == {"path": "/v2/health/ready", "port": "http"} for p in probes.values())
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    annotations = pod["metadata"]["annotations"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    # More than the image's EXIT_TIMEOUT (25 s) plus the door's 10 s grace.
    assert spec["terminationGracePeriodSeconds"] > 35


def test_services_pdb_and_hpa_find_the_pods() -> None:
    resources = base_resources()
    deployment = resources["Deployment/triton-multimodal"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    named_ports = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    service = resources["Service/triton-multimodal"]
    headless = resources["Service/triton-multimodal-grpc"]
    for svc in (service, headless):
        assert svc["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= named_ports
    assert {p["targetPort"] for p in service["spec"]["ports"]} == named_ports
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    assert headless["spec"]["clusterIP"] == "None"
    pdb = resources["PodDisruptionBudget/triton-multimodal"]["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= labels.items()
    target = resources["HorizontalPodAutoscaler/triton-multimodal"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_the_hpa_metric_is_the_adapter_rule_over_a_triton_metric() -> None:
    hpa = base_resources()["HorizontalPodAutoscaler/triton-multimodal"]["spec"]
    (metric,) = hpa["metrics"]
    values = documents(K8S / "prometheus-adapter" / "values.yaml")[0]
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    used = {m for m in TRITON_METRICS if m in rule["metricsQuery"] or m in rule["seriesQuery"]}
    assert used == {
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
        "nv_inference_request_failure",
    }


def test_the_scrape_job_keeps_what_the_adapter_needs() -> None:
    """Structure only: Debian's Prometheus is built without Kubernetes discovery, so its
    promtool rejects `kubernetes_sd_configs` (upstream's accepts it)."""
    job = documents(K8S / "prometheus-adapter" / "scrape-job.yaml")[0]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    assert {r.get("target_label") for r in job["relabel_configs"]} >= {"namespace", "pod"}
    assert job["job_name"] == "triton"  # the alerts' up{job="triton"}
    keep = job["relabel_configs"][0]
    assert keep["action"] == "keep"
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]


def test_the_kserve_predictor_is_a_valid_pod_of_the_same_server() -> None:
    (service,) = documents(K8S / "kserve" / "inferenceservice.yaml")
    assert (service["apiVersion"], service["kind"]) == (
        "serving.kserve.io/v1beta1",
        "InferenceService",
    )
    predictor = {
        k: v
        for k, v in service["spec"]["predictor"].items()
        if k not in ("minReplicas", "maxReplicas")
    }
    validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": predictor}
    )
    (server,) = predictor["containers"]
    deployment = base_resources()["Deployment/triton-multimodal"]["spec"]["template"]["spec"]
    assert server["image"] == deployment["containers"][0]["image"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


# --- the Deployment, for real ---------------------------------------------------------------

#: The ports the pod takes on the host's network.
POD_PORTS = (8000, 8001, 8002, 9000)
TRITON = "http://127.0.0.1:8000"


def kube_play_manifest(model_store: Path, image: str) -> dict[str, Any]:
    """The base Deployment as this machine can run it: the image under test; the store a
    host directory (the init container then checks it instead of downloading 1.5 GB); no
    port list, which podman turns into port mappings that host networking refuses (the
    container's ports are the host's), so the probes name their port by number; the init
    container kept after it ends (podman 4.3 removes a "once" init container too early and
    fails the play: "cannot remove container ... as it is running"); and no
    /dev/shm volume: podman makes an emptyDir owned by root, mode 0755, where Kubernetes makes
    it writable by all, so the pod keeps podman's own /dev/shm (64 MB: the test's requests
    are small)."""
    deployment = copy.deepcopy(base_resources()["Deployment/triton-multimodal"])
    deployment["metadata"]["name"] = f"k8stest-{secrets.token_hex(4)}"
    keep = {"io.podman.annotations.init.container.type": "always"}
    deployment["metadata"]["annotations"] = keep  # podman 4.3 reads the Deployment's own
    template = deployment["spec"]["template"]
    spec = template["spec"]
    for container in spec["initContainers"] + spec["containers"]:
        container["image"] = image
        numbers = {p["name"]: p["containerPort"] for p in container.pop("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                get = container[probe]["httpGet"]
                get["port"] = numbers.get(get["port"], get["port"])
    (server,) = spec["containers"]
    server["volumeMounts"] = [m for m in server["volumeMounts"] if m["mountPath"] != "/dev/shm"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "dshm"]
    (models,) = [v for v in spec["volumes"] if v["name"] == "models"]
    models.pop("emptyDir")
    models["hostPath"] = {"path": str(model_store.resolve()), "type": "Directory"}
    return deployment


@pytest.fixture(scope="module")
def pod(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    engine = os.environ.get("CONTAINER_ENGINE") or "podman"
    if engine != "podman":
        pytest.skip("podman kube play runs Kubernetes YAML; docker has no equivalent")
    taken = ports_taken(POD_PORTS)
    if taken:
        pytest.fail(f"ports {taken} are in use: the pod needs them on this host")
    manifest = tmp_path_factory.mktemp("k8s") / "deployment.yaml"
    manifest.write_text(yaml.safe_dump(kube_play_manifest(model_store, TRITON_IMAGE)))
    played = subprocess.run(
        ["podman", "kube", "play", "--network", "host", str(manifest)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    try:
        assert played.returncode == 0, played.stdout + played.stderr
        wait_for("the pod's Triton ready", lambda: answers(f"{TRITON}/v2/health/ready"), 900)
        yield
    finally:
        logs = subprocess.run(
            ["podman", "pod", "logs", "--tail=30", f"{manifest.stem}"],
            capture_output=True,
            text=True,
        )
        print(logs.stdout[-4000:])
        subprocess.run(["podman", "kube", "down", str(manifest)], capture_output=True, timeout=300)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.image
@pytest.mark.skipif(not espeak_available(), reason="espeak-ng makes the speech")
def test_the_deployment_serves_every_model(pod: None) -> None:
    from multimodal_client import Client

    client = Client("127.0.0.1:8001")
    audio = encode(*speak(SENTENCES[4]))
    assert "thank you" in client.transcribe(audio).lower()  # stt
    assert client.chat("Name a color.", max_new_tokens=4)  # llm
    assert client.chat("What is this?", images=[png()], max_new_tokens=4)  # vlm
    assert "".join(client.chat("Name a fruit.", max_new_tokens=4, stream=True))  # vlm_stream
    assert client.speak("Hello there.").startswith(b"RIFF")  # tts
    assert b"".join(client.speak("Hello. Goodbye.", stream=True))  # tts_stream
    events = list(client.voice_chat(audio, max_new_tokens=8))  # voice_chat
    assert events
    assert answers("http://127.0.0.1:9000/health")  # the OpenAI door beside Triton
