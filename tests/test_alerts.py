"""deploy/prometheus/alerts.yml: valid rules, promtool's unit tests, and names that exist.

promtool comes from Debian's `prometheus` package (`make test` installs it when it is missing);
the tests that run it skip where it cannot be found.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest import metrics as receiver_metrics
from tests.conftest import ROOT
from tests.test_metrics import exported_names
from workers import metrics as worker_metrics
from workers.backfill import reconcile_metrics

PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "copernica-ingest.json"
RECEIVER_JOB = "copernica-ingest-receiver"
WORKER_JOB = "copernica-ingest-worker"

# What operators must hear about (issue 15): one rule each.
EXPECTED_ALERTS = {
    "CopernicaIngestReceiverDown",
    "CopernicaIngestWorkerDown",
    "CopernicaIngestServerErrors",
    "CopernicaIngestQueueLagging",
    "CopernicaIngestFailedJobs",
    "CopernicaIngestSignaturesRefused",
    "CopernicaIngestNoWebhooks",
    "CopernicaIngestReconcileMissingEvents",
    "CopernicaIngestCopernicaFailedCalls",
    "CopernicaIngestReconcileStale",
}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def promtool() -> str:
    """promtool from the PATH, else the one `make test` unpacked from Debian's package into .tools/."""
    found = shutil.which("promtool") or shutil.which("promtool", path=str(ROOT / ".tools/usr/bin"))
    if found is None:
        pytest.skip("promtool not found (`make promtool` unpacks it from Debian's prometheus package)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    assert set(names) == EXPECTED_ALERTS
    doc = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    assert doc["rule_files"] == [ALERTS.name]
    fires, quiet = set(), set()
    for case in doc["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == EXPECTED_ALERTS, EXPECTED_ALERTS - fires
    assert quiet == EXPECTED_ALERTS, EXPECTED_ALERTS - quiet


def test_every_rule_is_labelled_and_explained() -> None:
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_alerts_use_only_exported_metrics() -> None:
    exprs = [rule["expr"] for rule in rules()]
    used = {name for expr in exprs for name in re.findall(r"\bcopernica_ingest_[a-z_]+", expr)}
    known = set().union(*(exported_names(m.REGISTRY) for m in (receiver_metrics, worker_metrics, reconcile_metrics)))
    assert used and used <= known, used - known
    for wanted in (
        "copernica_ingest_requests_total",
        "copernica_ingest_queue_oldest_age_seconds",
        "copernica_ingest_failed_jobs",
        "copernica_ingest_refused_total",
        "copernica_ingest_events_accepted_total",
        "copernica_ingest_events_stored_total",
        "copernica_ingest_reconcile_missing_events",
        "copernica_ingest_copernica_failed_calls",
        "copernica_ingest_reconcile_last_success_timestamp_seconds",
    ):
        assert wanted in used, wanted


def refusal_codes() -> set[str]:
    """Every `reason` label the receiver can count: the codes ingest.auth and ingest.signatures raise."""
    source = "".join((ROOT / "ingest" / name).read_text(encoding="utf-8") for name in ("auth.py", "signatures.py"))
    codes = set(re.findall(r'SignatureError\(\s*"(\w+)"', source))
    codes |= set(re.findall(r'Refused\(\s*\d+,\s*"(\w+)"', source))
    assert {"bad_signature", "unknown_key", "bad_token", "no_credentials"} <= codes  # the scan itself works
    return codes


def test_refused_reasons_are_codes_the_receiver_counts() -> None:
    """A renamed code in ingest.auth/signatures would silently blind the rotation alert."""
    codes = refusal_codes()
    (rule,) = [r for r in rules() if r["alert"] == "CopernicaIngestSignaturesRefused"]
    matchers = re.findall(r'reason=~"([^"]+)"', rule["expr"])
    assert matchers and len(set(matchers)) == 1, "one set of reasons, the same in every term"
    reasons = set(matchers[0].split("|"))
    assert {"bad_signature", "unknown_key"} <= reasons
    assert reasons <= codes, reasons - codes


def test_job_names_match_the_dashboard_and_the_documentation() -> None:
    text = ALERTS.read_text(encoding="utf-8")
    up_jobs = set(re.findall(r'up\{job="([^"]+)"\}', text))
    assert up_jobs == {RECEIVER_JOB, WORKER_JOB}
    header = text.split("groups:")[0]
    assert all(f'job="{job}"' in header for job in up_jobs), "document the assumed job names"
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text(encoding="utf-8"))["templating"]["list"]}
    assert variables["worker_job"]["query"] == WORKER_JOB
    assert RECEIVER_JOB in (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: with the 5xx threshold raised out of reach they fail."""
    binary = promtool()
    broken = ALERTS.read_text(encoding="utf-8").replace("> 0.05", "> 0.5")
    assert broken != ALERTS.read_text(encoding="utf-8")
    (tmp_path / ALERTS.name).write_text(broken, encoding="utf-8")
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    result = subprocess.run(
        [binary, "test", "rules", ALERTS_TEST.name], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "CopernicaIngestServerErrors" in result.stdout + result.stderr
