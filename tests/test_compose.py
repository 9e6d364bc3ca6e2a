"""deploy/compose/: the stack's files hold together, and the stack runs for real.

Everywhere: the compose file's structure (init before server, store read-only where served,
the project's rules mounted), Grafana's provisioning (one data source, the dashboards'), and
every dashboard query parses as PromQL (promtool) and names only metrics that exist.

With the image (`./scripts/image test tests/test_compose.py`): the stack comes up with
podman-compose (or docker compose) on the built image and a Prometheus image (Debian's
package where no registry serves prom/prometheus), Prometheus' targets API reports the server
up, after a short real load every panel's every query returns data from that Prometheus, and
so does the query prometheus-adapter makes for the Kubernetes HPA (deploy/k8s/).
Grafana itself is not started here (no registry, no package): its files are checked above.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
import yaml

from tests.conftest import ROOT, TRITON_IMAGE
from tests.speech import SENTENCES, encode, espeak_available, speak
from tests.stack import answers, ports_taken, wait_for
from tests.test_prometheus_rules import TRITON_METRICS, catalogue_series

COMPOSE = ROOT / "deploy" / "compose"
GRAFANA = COMPOSE / "grafana"
PROMTOOL = shutil.which("promtool")
#: Triton's own metrics the dashboards use beyond those the rules use.
DASHBOARD_TRITON_METRICS = (
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_cpu_memory_used_bytes",
    "nv_cpu_memory_total_bytes",
)
#: Grafana's variables, as a query sees them with every model chosen and a 1-minute window
#: (four scrapes at the stack's 15 s interval).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$model": ".*"}


def load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def dashboards() -> list[dict[str, Any]]:
    return [
        json.loads(path.read_text(encoding="utf-8"))
        for path in sorted((GRAFANA / "dashboards").glob("*.json"))
    ]


def panel_queries() -> list[tuple[str, str]]:
    """(panel title and refId, PromQL with Grafana's variables filled) of every target."""
    queries = []
    for dashboard in dashboards():
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for name, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(name, value)
                queries.append((f"{panel['title']} [{target['refId']}]", expr))
    return queries


def test_the_compose_file_orders_init_server_and_monitoring() -> None:
    services = load_yaml(COMPOSE / "compose.yaml")["services"]
    assert set(services) == {"model-store", "triton", "openai", "prometheus", "grafana"}
    assert services["model-store"]["command"] == ["build-store"]
    triton = services["triton"]
    assert triton["depends_on"] == {"model-store": {"condition": "service_completed_successfully"}}
    assert any(v.endswith(":/models:ro") for v in triton["volumes"]), "the store is read-only"
    assert triton["shm_size"] and triton["environment"]["TRITON_PROFILE"].endswith("production}")
    assert {p.split(":")[-1] for p in triton["ports"]} == {"8000", "8001", "8002"}
    # The door: its own container of the image, talking to Triton's gRPC port.
    door = services["openai"]
    assert door["command"] == ["python", "-m", "openai_api"] and door["ports"] == ["9000:9000"]
    assert door["environment"]["OPENAI_TRITON_URL"] == "triton:8001"
    assert triton["environment"]["OPENAI_PORT"] == "0"
    # Every file the stack mounts from this directory exists.
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), volume


def test_prometheus_in_the_stack_uses_the_project_rules() -> None:
    config = load_yaml(COMPOSE / "prometheus.yml")
    mounted = "/etc/prometheus/project/"
    assert config["rule_files"] and all(rule.startswith(mounted) for rule in config["rule_files"])
    for rule in config["rule_files"]:
        assert (ROOT / "deploy" / "prometheus" / rule.removeprefix(mounted)).is_file()
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    # The alerts know the server as up{job="triton"}; the door has its own job.
    assert jobs == {
        "triton": [{"targets": ["triton:8002"]}],
        "openai": [{"targets": ["openai:9000"]}],
    }


def test_grafana_provisions_the_data_source_every_panel_names() -> None:
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "triton-multimodal.yml")[
        "providers"
    ]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    named = {"type": "prometheus", "uid": source["uid"]}
    assert dashboards()
    for dashboard in dashboards():
        panels = dashboard["panels"]
        assert len({p["id"] for p in panels}) == len(panels)
        for panel in panels:
            assert panel["datasource"] == named and panel["targets"], panel["title"]
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
            refs = [t["refId"] for t in panel["targets"]]
            assert len(set(refs)) == len(refs), panel["title"]
            assert all(t["datasource"] == named for t in panel["targets"])


def test_the_dashboards_cover_what_operators_ask() -> None:
    used = " ".join(expr for _, expr in panel_queries())
    for metric in (
        "nv_inference_request_success",  # requests/s
        "nv_inference_request_summary_us",  # p50/p99 latency
        "nv_inference_queue_summary_us",  # queue time
        "multimodal_batch_rows_bucket",  # batch sizes
        "multimodal_time_to_first_token_seconds_bucket",
        "multimodal_generated_tokens_total",  # tokens/s
        "multimodal_real_time_factor_bucket",  # audio RTF
        "multimodal_request_errors_total",  # errors by code
        "multimodal_model_footprint_bytes",  # memory
    ):
        assert metric in used, metric


def test_every_panel_names_only_metrics_that_exist() -> None:
    known = catalogue_series() | set(TRITON_METRICS) | set(DASHBOARD_TRITON_METRICS)
    selector = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")
    bare = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*$")
    for title, expr in panel_queries():
        stripped = re.sub(r"\{[^}]*\}", "{}", expr)
        used = set(selector.findall(stripped)) | set(bare.findall(stripped))
        assert used and used <= known, (title, used - known)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as the expression of a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr}
        for i, (_, expr) in enumerate(panel_queries())
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- the stack, for real --------------------------------------------------------------------

#: The ports the stack takes on the host's network (compose.host.yaml).
STACK_PORTS = (8000, 8001, 8002, 9000, 9090)
PROMETHEUS_URL = "http://127.0.0.1:9090"
#: The models the live stack loads: one of each kind the panels measure (chat, STT, TTS).
STACK_MODELS = "stt,llm,tts"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def compose_command(engine: str) -> list[str]:
    if engine == "docker":
        return ["docker", "compose"]
    podman_compose = shutil.which("podman-compose") or str(
        Path(sys.executable).parent / "podman-compose"
    )
    return [podman_compose]


@pytest.fixture(scope="module")
def stack(model_store: Path) -> Iterator[None]:
    """The stack on the host's network, the store a directory, Grafana not started."""
    engine = os.environ.get("CONTAINER_ENGINE") or "podman"
    taken = ports_taken(STACK_PORTS)
    if taken:
        pytest.fail(f"ports {taken} are in use: the stack needs them on this host")
    prometheus_image = os.environ.get("PROMETHEUS_IMAGE", "localhost/prometheus:debian")
    if prometheus_image == "localhost/prometheus:debian":
        base = os.environ.get("PROMETHEUS_BASE", "localhost/debian:bookworm-minbase")
        subprocess.run(
            [engine, "build", "-q", "-f", str(COMPOSE / "prometheus.Containerfile"),
             f"--build-arg=BASE={base}", "-t", prometheus_image, str(COMPOSE)],
            check=True, timeout=900,
        )  # fmt: skip
    project = f"composetest-{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "TRITON_IMAGE": TRITON_IMAGE,
        "PROMETHEUS_IMAGE": prometheus_image,
        "MODEL_STORE_DIR": str(model_store.resolve()),
        "MODELS": STACK_MODELS,
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16),
        "TRITON_ADMIN_KEY": secrets.token_hex(16),
    }
    files = ["-f", str(COMPOSE / "compose.yaml"), "-f", str(COMPOSE / "compose.host.yaml")]
    compose = [*compose_command(engine), "-p", project, *files]
    up = subprocess.run(
        [*compose, "up", "-d", "model-store", "triton", "openai", "prometheus"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        wait_for("Triton ready", lambda: answers("http://127.0.0.1:8000/v2/health/ready"), 900)
        wait_for("Prometheus ready", lambda: answers(f"{PROMETHEUS_URL}/-/ready"), 300)
        yield
    finally:
        logs = subprocess.run(
            [*compose, "logs", "--tail=40"], env=env, capture_output=True, text=True
        )
        print(logs.stdout[-6000:], logs.stderr[-2000:])
        subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, timeout=300)


def targets(job: str = "triton") -> list[dict[str, Any]]:
    active = get_json(f"{PROMETHEUS_URL}/api/v1/targets")["data"]["activeTargets"]
    return [t for t in active if t["labels"]["job"] == job]


def query(expr: str) -> list[dict[str, Any]]:
    url = f"{PROMETHEUS_URL}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    result = get_json(url)
    assert result["status"] == "success", (expr, result)
    return list(result["data"]["result"])


def short_load() -> None:
    """Real requests to each served model, a few at once, and one that fails (for the errors
    panel): a transcription, a chat, a synthesis."""
    client = httpclient.InferenceServerClient("127.0.0.1:8000", network_timeout=300, concurrency=4)

    def strings(name: str, value: bytes) -> httpclient.InferInput:
        tensor = httpclient.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        return tensor

    audio = encode(*speak(SENTENCES[2]))
    pending = [
        client.async_infer("stt", [strings("audio", audio)]) for _ in range(4)
    ] + [
        client.async_infer("llm", [strings("prompt", b"Name a color.")]) for _ in range(2)
    ] + [
        client.async_infer("tts", [strings("text", b"Hello there.")]) for _ in range(2)
    ]  # fmt: skip
    for request in pending:
        request.get_result()
    with pytest.raises(Exception, match="audio"):
        client.infer("stt", [strings("audio", b"not audio")])


@pytest.mark.image
@pytest.mark.skipif(not espeak_available(), reason="espeak-ng makes the speech")
def test_the_stack_serves_and_every_panel_returns_data(stack: None) -> None:
    wait_for("Prometheus scrapes Triton", lambda: [t["health"] for t in targets()] == ["up"], 120)
    short_load()
    missing: list[str] = []

    def all_return_data() -> bool:
        missing[:] = [title for title, expr in panel_queries() if not query(expr)]
        return not missing

    deadline = time.monotonic() + 180
    while not all_return_data() and time.monotonic() < deadline:
        time.sleep(5)
    assert not missing, f"panels without data: {missing}"
    # The HPA's metric (deploy/k8s/) as prometheus-adapter asks for it, per scraped server.
    (rule,) = load_yaml(ROOT / "deploy" / "k8s" / "prometheus-adapter" / "values.yaml")["rules"][
        "custom"
    ]
    adapter = rule["metricsQuery"].replace("<<.GroupBy>>", "instance")
    adapter = adapter.replace("<<.LabelMatchers>>", 'job="triton"')
    (per_server,) = query(adapter)
    assert float(per_server["value"][1]) >= 0.0
    # The project's rules loaded, and the server-down alert is quiet.
    groups = get_json(f"{PROMETHEUS_URL}/api/v1/rules")["data"]["groups"]
    assert {g["name"] for g in groups} >= {"triton", "multimodal", "multimodal-alerts"}
    assert query('up{job="triton"}')[0]["value"][1] == "1"
    # The door, its own container, answers the official client through Triton, and is scraped.
    door = openai.OpenAI(base_url="http://127.0.0.1:9000/v1", api_key="unused", max_retries=0)
    answer = door.chat.completions.create(
        model="llm", messages=[{"role": "user", "content": "Name a color."}], max_tokens=8
    )
    assert answer.choices[0].message.content and answer.usage is not None
    wait_for(
        "Prometheus scrapes the door",
        lambda: [t["health"] for t in targets("openai")] == ["up"],
        120,
    )
