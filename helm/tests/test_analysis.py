"""The canary analysis' PromQL, run by a real Prometheus against a real `alp serve user`.

The chart's AnalysisTemplate is rendered (with a short window, so the test takes seconds, not
minutes), its queries are asked of a Prometheus that scrapes the service the way the chart's
ServiceMonitor would label it, and its success conditions are judged on the answers: no traffic
and too little traffic pass, healthy traffic (client errors included) passes, server errors fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from test_chart import NAMESPACE, alp_binary, config_of, free_port, health, name, of_kind, render

CANARY_HASH = "6b7f9c5d4"
WINDOW = "15s"
MIN_REQUESTS = 20
ENTRY = "alp.user.v1.UserService"


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    assert found, "prometheus is missing: apt-get install prometheus (scripts/test.sh does)"
    return found


@pytest.fixture(scope="module")
def analysis() -> dict[str, dict]:
    # A generous latency bound: this judges the query, not the speed of a debug build on SQLite.
    objects = render(
        {
            "rollouts": {"analysis": {"window": WINDOW, "minRequests": MIN_REQUESTS}},
            "services": {"user": {"analysisMaxP99Seconds": 1}},
        }
    )
    template = of_kind(objects, "AnalysisTemplate")[name("user") + "-canary"]
    return {m["name"]: m for m in template["spec"]["metrics"]}, objects


@pytest.fixture(scope="module")
def suite(analysis, tmp_path_factory):
    """`alp serve user` with the chart's environment, its content service unreachable (so
    enrolments fail with UNAVAILABLE), and a Prometheus scraping it every second."""
    _, objects = analysis
    work = tmp_path_factory.mktemp("analysis")
    binary = alp_binary()
    port, metrics, nowhere, web = free_port(), free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALP_")}
    env.update(config_of(objects, "user"))
    env.update(
        ALP_LISTEN=f"127.0.0.1:{port}",
        ALP_METRICS_LISTEN=f"127.0.0.1:{metrics}",
        ALP_DATABASE_URL=f"sqlite://{work / 'user.db'}?mode=rwc",
        ALP_CONTENT_ADDR=f"127.0.0.1:{nowhere}",
        ALP_DOWNSTREAM_TIMEOUT="200ms",
    )
    subprocess.run([str(binary), "migrate", "user"], env=env, check=True, capture_output=True)
    server = subprocess.Popen([str(binary), "serve", "user"], env=env, stderr=subprocess.DEVNULL)
    (work / "prometheus.yml").write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "alp",
                        "static_configs": [
                            {
                                "targets": [f"127.0.0.1:{metrics}"],
                                # What the ServiceMonitor adds: the namespace and the pod's hash.
                                "labels": {"namespace": NAMESPACE, "rollouts_pod_template_hash": CANARY_HASH},
                            }
                        ],
                    }
                ],
            }
        )
    )
    prometheus = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: '"SERVING"' in health(port, ENTRY), "the user service to serve")
        wait_for(lambda: query(web, "up")[0] == 1.0, "Prometheus to scrape")
        yield port, web
    finally:
        for process in (server, prometheus):
            process.terminate()
        for process in (server, prometheus):
            process.wait(timeout=40)


def wait_for(condition, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except (OSError, IndexError, KeyError, ValueError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def query(web: int, promql: str) -> list[float]:
    url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return [float(sample["value"][1]) for sample in body["data"]["result"]]


def measure(web: int, metric: dict) -> tuple[float, bool]:
    """One measurement as Argo Rollouts takes it: the query, then `result[0] <= bound`."""
    promql = metric["provider"]["prometheus"]["query"].replace("{{args.canary-hash}}", CANARY_HASH)
    result = query(web, promql)
    assert len(result) == 1, f"{metric['name']}: exactly one value, got {result}"
    bound = float(re.fullmatch(r"result\[0\] <= ([0-9.]+)", metric["successCondition"]).group(1))
    return result[0], result[0] <= bound


def grpc(port: int, method: str, request: dict) -> str:
    result = subprocess.run(
        ["grpcurl", "-plaintext", "-max-time", "3", "-d", json.dumps(request), f"127.0.0.1:{port}",
         f"alp.user.v1.UserService/{method}"],
        capture_output=True, text=True, check=False,
    )
    return result.stdout + result.stderr


def settle(web: int, calls: int) -> None:
    """Waits until Prometheus has scraped at least `calls` ALP calls in total."""
    total = f'sum(alp_grpc_server_handled_total{{service=~"alp[.].+", rollouts_pod_template_hash="{CANARY_HASH}"}})'
    wait_for(lambda: query(web, total)[0] >= calls, f"{calls} calls in Prometheus")
    time.sleep(1.2)  # one more scrape, so rate() sees the last step


def test_the_analysis_passes_quiet_and_healthy_canaries_and_fails_a_failing_one(analysis, suite):
    metrics, _ = analysis
    port, web = suite

    # No ALP call yet (the probes' health checks do not count): both measurements read 0 and pass.
    for metric in metrics.values():
        assert measure(web, metric) == (0.0, True), metric["name"]

    # Too few calls to judge, half of them failing: still 0.
    for i in range(2):
        assert '"learnerId"' in grpc(port, "CreateLearner", {"learner": {"learner_id": f"l{i}"}})
        assert "Unavailable" in grpc(port, "EnrolLearner", {"learner_id": f"l{i}", "course_id": "c1"})
    settle(web, 4)
    assert measure(web, metrics["error-ratio"]) == (0.0, True)

    # Healthy traffic, client errors included (NOT_FOUND is the caller's problem): once the two
    # failures have left the window, the ratio is 0 over enough calls (p99 reads above 0 only then).
    calls, deadline = 4, time.monotonic() + 60
    while True:
        for _ in range(4):
            assert "NotFound" in grpc(port, "GetLearner", {"learner_id": f"ghost{calls}"})
            calls += 1
        settle(web, calls)
        (ratio, ratio_ok), (latency, latency_ok) = measure(web, metrics["error-ratio"]), measure(web, metrics["p99-latency"])
        if ratio == 0.0 and latency > 0:
            break
        assert time.monotonic() < deadline, (ratio, latency)
    assert ratio_ok and latency_ok and latency < 1, latency

    # The canary's downstream is gone: UNAVAILABLE on every enrolment fails the measurement.
    for i in range(MIN_REQUESTS):
        assert "Unavailable" in grpc(port, "EnrolLearner", {"learner_id": "l0", "course_id": "c1"})
        calls += 1
        if i % 5 == 4:
            settle(web, calls)  # spread over scrapes: rate() cannot see a series' first jump
    ratio, ok = measure(web, metrics["error-ratio"])
    assert not ok and ratio > 0.1, ratio
