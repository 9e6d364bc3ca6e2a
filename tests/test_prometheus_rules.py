"""deploy/prometheus/: the config and rules pass promtool, every alert has a unit test that
fires it, and the rules query only metrics that exist (the models' catalogue, Triton's own).

promtool comes with the Debian package `prometheus` (./scripts/setup installs it); the tests
skip only where it is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.metrics import CATALOGUE, HISTOGRAM

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")

#: Triton 2.51's own metrics the rules use (the summaries only with --metrics-config
#: summary_latencies=true; 2.51 has no latency histograms); tests/test_metrics_server.py reads
#: each from a real server.
TRITON_METRICS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_request_summary_us",
    "nv_inference_queue_summary_us",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


def rules(file: str) -> list[dict[str, Any]]:
    with open(PROMETHEUS / file, encoding="utf-8") as handle:
        return [rule for group in yaml.safe_load(handle)["groups"] for rule in group["rules"]]


def catalogue_series() -> set[str]:
    """Every series name the models export: histograms as their _bucket, _sum and _count."""
    names = set()
    for spec in CATALOGUE:
        if spec.kind == HISTOGRAM:
            names |= {f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"}
        else:
            names.add(spec.name)
    return names


@needs_promtool
def test_the_config_and_its_rule_files_are_valid() -> None:
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_the_rule_unit_tests_pass() -> None:
    tested = promtool("test", "rules", "tests/alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    with open(PROMETHEUS / "tests" / "alerts_test.yml", encoding="utf-8") as handle:
        tests = yaml.safe_load(handle)["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in rules("alerts.yml")} == fired


def test_the_rules_query_only_metrics_that_exist() -> None:
    recorded = {rule["record"] for rule in rules("recording.yml")}
    known = catalogue_series() | set(TRITON_METRICS) | recorded | {"up"}
    selector = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]")
    for rule in rules("recording.yml") + rules("alerts.yml"):
        expr = re.sub(r"\{[^}]*\}", "{}", rule["expr"])  # label matchers are not metrics
        used = {name for name in selector.findall(expr) if name not in {"by", "without"}}
        used |= {name for name in recorded if name in expr}
        assert used and used <= known, (rule.get("record") or rule.get("alert"), used - known)
