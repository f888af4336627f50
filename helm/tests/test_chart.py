"""The Helm chart, rendered and linted by Helm v4's own engine (helm-python-sdk), every object
validated against the Kubernetes schemas (kubernetes-validate) and the CRDs' schemas
(@kubernetes-models, through validate-crds.js), and the properties operators rely on asserted:
the capacity plan's sizing, the canary steps, the rollback analysis, probes, security context,
network policies, migrations and the drain.

Run from the repository root: `python -m pytest helm/tests` (scripts/test.sh installs the tools).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "alp"
NAMESPACE = "learn"
RELEASE = "alp"
SERVICES = ["scheduler", "user", "content", "scoring"]
# Oldest supported (native gRPC probes are GA in 1.27) and the newest the validator knows.
KUBE_VERSIONS = ["1.27", kubernetes_validate.latest_version()]

# API groups of the custom resources the chart renders (validated by validate-crds.js).
CUSTOM_GROUPS = {"argoproj.io", "networking.istio.io", "gateway.networking.k8s.io", "monitoring.coreos.com"}
# The chart's defaults: HPA range and CPU from DESIGN §1's plan, memory and pools from our own
# capacity run (docs/performance.md, "Sizing").
PLAN = {
    "scheduler": {"min": 8, "max": 12, "cpu": "750m", "memory": "512Mi", "pool": (16, 4)},
    "user": {"min": 6, "max": 10, "cpu": "500m", "memory": "512Mi", "pool": (16, 4)},
    "content": {"min": 4, "max": 6, "cpu": "600m", "memory": "1Gi", "pool": (16, 4)},
    "scoring": {"min": 4, "max": 6, "cpu": "1500m", "memory": "512Mi", "pool": (16, 4)},
}

# Each toggle, on its own, then the evaluation values file that turns several on together.
VARIANTS = {
    "default": {},
    "deployments": {"rollouts": {"enabled": False}},
    "gateway-api": {"rollouts": {"trafficRouting": {"router": "gatewayAPI"}}},
    "gateway-api-north-south": {
        "rollouts": {
            "trafficRouting": {
                "router": "gatewayAPI",
                "gatewayAPI": {"parentRefs": [{"name": "edge", "namespace": "gateways", "sectionName": "grpc"}]},
            }
        }
    },
    "no-router": {"rollouts": {"trafficRouting": {"router": "none"}}},
    "no-analysis": {"rollouts": {"analysis": {"enabled": False}}},
    "service-monitor": {"serviceMonitor": {"enabled": True}},
    "evaluation-redis": {"evaluation": {"redis": {"enabled": True}}},
    "evaluation-postgresql": {"evaluation": {"postgresql": {"enabled": True}}},
    "load-test": {"loadTest": {"enabled": True}},
    "no-network-policy": {"networkPolicy": {"enabled": False}},
    "no-migrations": {"migrations": {"enabled": False}},
    "external-redis-direct-db": {
        "redis": {"nodes": ["redis-0.redis:6379", "redis-1.redis:6379"]},
        "services": {"scheduler": {"database": {"directUrlKey": "direct-url"}}},
    },
    "values-evaluation.yaml": yaml.safe_load((CHART / "values-evaluation.yaml").read_text()),
}


def render(values: dict | None = None) -> list[dict]:
    """Every object the chart renders, hooks included, in template order."""
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith(".yaml"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def name(service: str) -> str:
    return f"{RELEASE}-{service}"


def container(workload: dict) -> dict:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def config_of(objects: list[dict], service: str) -> dict[str, str]:
    return of_kind(objects, "ConfigMap")[name(service)]["data"]


@pytest.fixture(scope="module")
def default() -> list[dict]:
    return render()


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request) -> tuple[str, list[dict]]:
    return request.param, render(VARIANTS[request.param])


# --- Helm's own checks -----------------------------------------------------------------------


@pytest.mark.parametrize("variant_name", list(VARIANTS))
def test_lint_is_clean_with_every_toggle(variant_name):
    report = helm.lint(str(CHART), VARIANTS[variant_name], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2 or "icon" not in m["error"]]
    assert report["errors"] == [] and problems == [], report


def test_every_object_validates_against_its_schema(variant):
    label, objects = variant
    custom = [o for o in objects if o["apiVersion"].split("/")[0] in CUSTOM_GROUPS]
    builtin = [o for o in objects if o["apiVersion"].split("/")[0] not in CUSTOM_GROUPS]
    for version in KUBE_VERSIONS:
        for o in builtin:
            assert schema_error(o, version) is None, f"{label}: {o['kind']} {o['metadata']['name']} on {version}"
    failures = validate_custom(custom)
    assert failures == [], f"{label}: {failures}"


def schema_error(o: dict, version: str) -> str | None:
    """Why `o` breaks the Kubernetes schema of `version` (unknown fields included), or None."""
    try:
        kubernetes_validate.validate(o, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{error.message} at {'/'.join(map(str, error.absolute_path))}"
    return None


def validate_custom(objects: list[dict]) -> list[dict]:
    if not objects:
        return []
    node_path = os.environ.get("ALP_NODE_MODULES", str(ROOT / ".tools" / "node_modules"))
    result = subprocess.run(
        ["node", str(Path(__file__).with_name("validate-crds.js"))],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_PATH": node_path},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_crd_validator_rejects_a_broken_rollout(default):
    rollout = json.loads(json.dumps(of_kind(default, "Rollout")[name("scheduler")]))
    rollout["spec"]["strategy"]["canary"]["steps"][0]["setWeight"] = "one percent"
    failures = validate_custom([rollout, {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}])
    assert [f["kind"] for f in failures] == ["argoproj.io/v1alpha1/Rollout", "example.com/v1/Gadget"], failures
    assert "setWeight" in failures[0]["error"]


def test_the_schema_validator_rejects_an_unknown_field(default):
    hpa = json.loads(json.dumps(of_kind(default, "HorizontalPodAutoscaler")[name("user")]))
    hpa["spec"]["minReplica"] = 3
    assert "minReplica" in schema_error(hpa, KUBE_VERSIONS[-1])


# --- Per service: workload, autoscaling, disruption budget ------------------------------------


def test_every_service_has_a_rollout_hpa_pdb_account_and_services(default):
    rollouts = of_kind(default, "Rollout")
    hpas = of_kind(default, "HorizontalPodAutoscaler")
    pdbs = of_kind(default, "PodDisruptionBudget")
    accounts = of_kind(default, "ServiceAccount")
    services = of_kind(default, "Service")
    assert sorted(rollouts) == sorted(name(s) for s in SERVICES)
    assert not of_kind(default, "Deployment")
    for service in SERVICES:
        n = name(service)
        assert hpas[n]["spec"]["scaleTargetRef"] == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": n}
        assert pdbs[n]["spec"] == {
            "maxUnavailable": 1,
            "selector": rollouts[n]["spec"]["selector"],
        }
        assert accounts[n]["automountServiceAccountToken"] is False
        assert rollouts[n]["spec"]["template"]["spec"]["serviceAccountName"] == n
        assert "replicas" not in rollouts[n]["spec"], "the HPA owns the replica count"
        for suffix in ["", "-canary", "-headless"]:
            port = services[n + suffix]["spec"]["ports"][0]
            assert port["name"] == "grpc" and port["appProtocol"] == "grpc", port
        assert services[n + "-headless"]["spec"]["clusterIP"] == "None"


def test_sizing_is_the_capacity_plans(default):
    rollouts = of_kind(default, "Rollout")
    hpas = of_kind(default, "HorizontalPodAutoscaler")
    for service, plan in PLAN.items():
        hpa = hpas[name(service)]["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (plan["min"], plan["max"]), service
        (metric,) = hpa["metrics"]
        assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}
        assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 30
        resources = container(rollouts[name(service)])["resources"]
        assert resources["requests"] == {"cpu": plan["cpu"], "memory": plan["memory"]}, service
        assert resources["limits"]["memory"] == plan["memory"], service
        config = config_of(default, service)
        pool = (int(config["ALP_DB_MAX_CONNECTIONS"]), int(config["ALP_DB_MIN_CONNECTIONS"]))
        assert pool == plan["pool"], service


def test_runtime_workers_follow_the_cpu_request(default):
    for service, workload in of_kind(default, "Rollout").items():
        env = {e["name"]: e for e in container(workload)["env"]}
        field = env["TOKIO_WORKER_THREADS"]["valueFrom"]["resourceFieldRef"]
        assert field == {"containerName": service.removeprefix(f"{RELEASE}-"), "resource": "requests.cpu", "divisor": "1"}
    # Without a CPU request the downward API would give 0, which the runtime refuses: no setting.
    unrequested = {"services": {"user": {"resources": {"requests": {"cpu": None}}}}}
    env = container(of_kind(render(unrequested), "Rollout")[name("user")])["env"]
    assert "TOKIO_WORKER_THREADS" not in {e["name"] for e in env}


def test_deployments_replace_rollouts_when_rollouts_are_off():
    objects = render(VARIANTS["deployments"])
    assert not [o for o in objects if o["apiVersion"].startswith("argoproj.io")]
    assert not of_kind(objects, "VirtualService")
    deployments = of_kind(objects, "Deployment")
    hpas = of_kind(objects, "HorizontalPodAutoscaler")
    for service in SERVICES:
        n = name(service)
        assert deployments[n]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert hpas[n]["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": n}
        assert container(deployments[n])["readinessProbe"]["grpc"]["service"].startswith("alp.")
    assert f"{name('content')}-canary" not in of_kind(objects, "Service")


# --- The canary --------------------------------------------------------------------------------


def test_canary_steps_are_the_plans(default):
    for rollout in of_kind(default, "Rollout").values():
        canary = rollout["spec"]["strategy"]["canary"]
        assert canary["steps"] == [
            {"setWeight": 1},
            {"pause": {"duration": "2h"}},
            {"setWeight": 10},
            {"pause": {"duration": "4h"}},
        ]
        n = rollout["metadata"]["name"]
        assert (canary["stableService"], canary["canaryService"]) == (n, n + "-canary")
        assert canary["abortScaleDownDelaySeconds"] == 30


def test_istio_splits_requests_by_weight_on_the_stable_services_name(default):
    virtual_services = of_kind(default, "VirtualService")
    for rollout in of_kind(default, "Rollout").values():
        n = rollout["metadata"]["name"]
        routing = rollout["spec"]["strategy"]["canary"]["trafficRouting"]["istio"]["virtualService"]
        assert routing == {"name": n, "routes": ["primary"]}
        spec = virtual_services[n]["spec"]
        assert spec["hosts"] == [n]
        (route,) = spec["http"]
        assert route["name"] == "primary"
        assert [(d["destination"]["host"], d["weight"]) for d in route["route"]] == [(n, 100), (n + "-canary", 0)]
    # Callers address the stable Service, so the mesh applies the weights; the address is the
    # proxy's, so its health is not watched (that would follow one pod behind it).
    assert config_of(default, "scheduler")["ALP_SCORING_ADDR"] == f"{name('scoring')}:50054"
    assert config_of(default, "user")["ALP_CONTENT_ADDR"] == f"{name('content')}:50053"
    assert config_of(default, "user")["ALP_DOWNSTREAM_HEALTH_WATCH"] == "false"
    assert "ALP_DOWNSTREAM_HEALTH_WATCH" not in config_of(default, "content"), "content calls nobody"


def test_gateway_api_routes_grpc_through_the_plugin():
    objects = render(VARIANTS["gateway-api"])
    routes = of_kind(objects, "GRPCRoute")
    assert not of_kind(objects, "VirtualService")
    for rollout in of_kind(objects, "Rollout").values():
        n = rollout["metadata"]["name"]
        plugins = rollout["spec"]["strategy"]["canary"]["trafficRouting"]["plugins"]
        assert plugins == {"argoproj-labs/gatewayAPI": {"grpcRoute": n, "namespace": NAMESPACE}}
        spec = routes[n]["spec"]
        assert spec["parentRefs"][0]["kind"] == "Service" and spec["parentRefs"][0]["name"] == n
        backends = spec["rules"][0]["backendRefs"]
        assert [(b["name"], b["weight"]) for b in backends] == [(n, 100), (n + "-canary", 0)]
    gateway = render(VARIANTS["gateway-api-north-south"])
    assert of_kind(gateway, "GRPCRoute")[name("scheduler")]["spec"]["parentRefs"] == [
        {"name": "edge", "namespace": "gateways", "sectionName": "grpc"}
    ]


def test_without_a_router_callers_balance_over_the_headless_service():
    objects = render(VARIANTS["no-router"])
    for rollout in of_kind(objects, "Rollout").values():
        canary = rollout["spec"]["strategy"]["canary"]
        assert "trafficRouting" not in canary and "abortScaleDownDelaySeconds" not in canary
    config = config_of(objects, "scheduler")
    assert config["ALP_CONTENT_ADDR"] == f"{name('content')}-headless:50053"
    assert config["ALP_USER_ADDR"] == f"{name('user')}-headless:50052"
    assert "ALP_DOWNSTREAM_HEALTH_WATCH" not in config, "each pod's health is watched"


def duration_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", text))


def test_analysis_fails_a_bad_canary_within_five_minutes(default):
    templates = of_kind(default, "AnalysisTemplate")
    for rollout in of_kind(default, "Rollout").values():
        n = rollout["metadata"]["name"]
        analysis = rollout["spec"]["strategy"]["canary"]["analysis"]
        assert analysis["templates"] == [{"templateName": n + "-canary"}]
        assert analysis["startingStep"] == 1, "from the 1 % step on, in the background"
        assert analysis["args"] == [{"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}}]
        metrics = {m["name"]: m for m in templates[n + "-canary"]["spec"]["metrics"]}
        assert set(metrics) == {"error-ratio", "p99-latency"}
        for metric in metrics.values():
            # A failing canary fails failureLimit + 1 measurements in a row, one per interval; the
            # query's window adds at most its length before the errors dominate it.
            query = metric["provider"]["prometheus"]["query"]
            window = duration_seconds(re.search(r"\[(\w+)\]", query).group(1))
            detection = (metric["failureLimit"] + 1) * duration_seconds(metric["interval"]) + window / 2
            assert detection <= 5 * 60, (n, metric["name"], detection)
            assert 'rollouts_pod_template_hash="{{args.canary-hash}}"' in query, "the canary's pods only"
            assert 'service=~"alp[.].+"' in query, "ALP's RPCs, not the probes' health checks"
            # Empty results (no traffic yet, no errors ever) read as 0, never as a failed query.
            assert query.rstrip().endswith("or on() vector(0)")
            assert ">= 50)" in query, "too few calls to judge pass"
        assert metrics["error-ratio"]["successCondition"] == "result[0] <= 0.001"
        assert re.fullmatch(r"result\[0\] <= 0\.0\d+", metrics["p99-latency"]["successCondition"])
        assert "UNAVAILABLE" in metrics["error-ratio"]["provider"]["prometheus"]["query"]
        assert "INVALID_ARGUMENT" not in metrics["error-ratio"]["provider"]["prometheus"]["query"]


def test_analysis_off_leaves_no_templates():
    objects = render(VARIANTS["no-analysis"])
    assert not of_kind(objects, "AnalysisTemplate")
    for rollout in of_kind(objects, "Rollout").values():
        assert "analysis" not in rollout["spec"]["strategy"]["canary"]


# --- Pods ------------------------------------------------------------------------------------


def test_probes_use_native_grpc_on_the_services_port_and_health_entry(default):
    rollouts = of_kind(default, "Rollout")
    for service in SERVICES:
        c = container(rollouts[name(service)])
        (grpc,) = [p for p in c["ports"] if p["name"] == "grpc"]
        entry = health_entry_from_proto(service)
        assert c["readinessProbe"]["grpc"] == {"port": grpc["containerPort"], "service": entry}
        assert c["livenessProbe"]["grpc"] == {"port": grpc["containerPort"], "service": entry + "/live"}
        assert c["startupProbe"]["grpc"] == c["livenessProbe"]["grpc"]
        assert config_of(default, service)["ALP_LISTEN"] == f"0.0.0.0:{grpc['containerPort']}"
        assert c["args"] == ["serve", service]


def health_entry_from_proto(service: str) -> str:
    """The gRPC service name the binary registers as its health entry, read from the proto."""
    proto = (ROOT / "proto" / "alp" / service / "v1" / f"{service}.proto").read_text()
    package = re.search(r"^package ([\w.]+);", proto, re.M).group(1)
    names = re.findall(r"^service (\w+Service) \{", proto, re.M)
    assert len(names) == 1, names
    return f"{package}.{names[0]}"


def test_termination_grace_covers_the_drain(default):
    rollouts = of_kind(default, "Rollout")
    for service in SERVICES:
        config = config_of(default, service)
        drain = duration_seconds(config["ALP_DRAIN_DELAY"]) + duration_seconds(config["ALP_SHUTDOWN_GRACE"])
        assert rollouts[name(service)]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain, service
    longer = render({"server": {"shutdownGraceSeconds": 120}})
    assert of_kind(longer, "Rollout")[name("user")]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 130


def pods(objects: list[dict]) -> list[tuple[str, dict]]:
    found = []
    for o in objects:
        if o["kind"] in {"Rollout", "Deployment", "StatefulSet", "Job"}:
            found.append((f"{o['kind']} {o['metadata']['name']}", o["spec"]["template"]["spec"]))
    return found


def test_every_pod_runs_locked_down(variant):
    label, objects = variant
    for what, spec in pods(objects):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, (label, what)
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, (label, what)
        assert spec["automountServiceAccountToken"] is False, (label, what)
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (label, what, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (label, what, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (label, what, c["name"])
            assert "limits" in c["resources"] and "requests" in c["resources"], (label, what, c["name"])


def test_configuration_comes_from_values_and_existing_secrets(default):
    rollouts = of_kind(default, "Rollout")
    for service in SERVICES:
        (url,) = [e for e in container(rollouts[name(service)])["env"] if e["name"] == "ALP_DATABASE_URL"]
        assert url["valueFrom"]["secretKeyRef"] == {"name": f"alp-{service}-db", "key": "url"}
        checksum = rollouts[name(service)]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        assert re.fullmatch(r"[0-9a-f]{64}", checksum), "pods roll when their configuration changes"
    assert "ALP_REDIS_NODES" not in config_of(default, "content"), "no Redis configured: in-process caches"
    objects = render(VARIANTS["external-redis-direct-db"])
    assert config_of(objects, "content")["ALP_REDIS_NODES"] == "redis-0.redis:6379,redis-1.redis:6379"
    scheduler = config_of(objects, "scheduler")
    assert {k for k in scheduler if k.endswith("_ADDR")} == {"ALP_CONTENT_ADDR", "ALP_SCORING_ADDR", "ALP_USER_ADDR"}
    assert {k for k in config_of(objects, "user") if k.endswith("_ADDR")} == {"ALP_CONTENT_ADDR"}
    assert not {k for k in config_of(objects, "content") if k.endswith("_ADDR")}


def test_a_chart_upgrade_alone_does_not_start_a_canary():
    bumped = render({"commonLabels": {"team": "learning"}})
    labels = of_kind(bumped, "Rollout")[name("user")]["spec"]["template"]["metadata"]["labels"]
    assert "team" not in labels and "helm.sh/chart" not in labels


# --- Network policies ------------------------------------------------------------------------


def admitted(policy: dict) -> tuple[set[str], bool]:
    """The components allowed on gRPC, and whether outside clients are."""
    (grpc_rule,) = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "grpc"] or [{"from": []}]
    components, clients = set(), False
    for peer in grpc_rule["from"]:
        labels = peer.get("podSelector", {}).get("matchLabels", {})
        if "app.kubernetes.io/component" in labels:
            components.add(labels["app.kubernetes.io/component"])
        if labels.get("alp-client") == "true":
            clients = True
    return components, clients


def test_each_service_admits_only_its_callers(default):
    policies = of_kind(default, "NetworkPolicy")
    expected = {
        "scheduler": (set(), True),
        "user": ({"scheduler"}, True),
        "content": ({"scheduler", "user"}, True),
        "scoring": ({"scheduler"}, False),
    }
    for service, wanted in expected.items():
        policy = policies[name(service)]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == service
        assert admitted(policy) == wanted, service
        (metrics,) = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "http-metrics"]
        assert metrics["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert not of_kind(render(VARIANTS["no-network-policy"]), "NetworkPolicy")


def test_the_load_generator_is_admitted_as_a_client():
    objects = render(VARIANTS["load-test"])
    (job,) = [j for n, j in of_kind(objects, "Job").items() if "load-test" in n]
    template = job["spec"]["template"]
    assert template["metadata"]["labels"]["alp-client"] == "true"
    init, load = template["spec"]["initContainers"][0], template["spec"]["containers"][0]
    assert init["args"][0] == "dataset" and "--checkpoint" in init["args"]
    assert load["args"][:3] == ["load", "--endpoint", "mix"] and "--fail-on-errors" in load["args"]
    assert load["args"][load["args"].index("--scheduler-addr") + 1] == f"{name('scheduler')}:50051"
    assert template["spec"]["restartPolicy"] == "OnFailure", "a retry keeps the data set's checkpoint"


# --- Migrations and evaluation dependencies --------------------------------------------------


def test_a_migration_job_runs_before_install_and_upgrade_per_service(default):
    jobs = of_kind(default, "Job")
    for service in SERVICES:
        job = jobs[f"{name(service)}-migrate"]
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
        c = container(job)
        assert c["args"] == ["migrate", service]
        (url,) = [e for e in c["env"] if e["name"] == "ALP_DATABASE_URL"]
        assert url["valueFrom"]["secretKeyRef"] == {"name": f"alp-{service}-db", "key": "url"}
        component = job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        assert component == f"{service}-migrate", "not selected by the service's Services or PDB"
    direct = of_kind(render(VARIANTS["external-redis-direct-db"]), "Job")[f"{name('scheduler')}-migrate"]
    (url,) = [e for e in container(direct)["env"] if e["name"] == "ALP_DATABASE_URL"]
    assert url["valueFrom"]["secretKeyRef"]["key"] == "direct-url", "migrations bypass the pooler"
    assert not [n for n in of_kind(render(VARIANTS["no-migrations"]), "Job") if n.endswith("-migrate")]


def test_the_evaluation_dependencies_are_wired_in():
    objects = render(VARIANTS["evaluation-redis"])
    redis = of_kind(objects, "StatefulSet")[f"{RELEASE}-redis"]
    assert redis["spec"]["replicas"] == 6
    nodes = config_of(objects, "scoring")["ALP_REDIS_NODES"].split(",")
    assert nodes == [f"{RELEASE}-redis-{i}.{RELEASE}-redis:6379" for i in range(6)]
    assert of_kind(objects, "Job")[f"{RELEASE}-redis-cluster-setup"]["metadata"]["annotations"]["helm.sh/hook"]

    objects = render(VARIANTS["evaluation-postgresql"])
    secret = of_kind(objects, "Secret")[f"{RELEASE}-evaluation-db"]
    for service in SERVICES:
        assert secret["stringData"][service].endswith(f"@{RELEASE}-postgresql:5432/alp_{service}")
        rollout = of_kind(objects, "Rollout")[name(service)]["spec"]["template"]["spec"]
        (migrate,) = rollout["initContainers"]
        assert migrate["args"] == ["migrate", service]
    assert not [n for n in of_kind(objects, "Job") if n.endswith("-migrate")], "the pods migrate instead"


# --- Values that make no sense are refused, naming the field ---------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"services": {"search": {}}}, "additional properties 'search' not allowed"),
        ({"services": {"user": {"autoscaling": {"minReplicas": "six"}}}}, "/services/user/autoscaling/minReplicas"),
        ({"rollouts": {"trafficRouting": {"router": "nginx"}}}, "/rollouts/trafficRouting/router"),
        ({"services": {"user": {"autoscaling": {"minReplicas": 20}}}}, "minReplicas (20) is above maxReplicas (10)"),
        ({"services": {"content": {"calls": ["search"]}}}, "/services/content/calls/0"),
        ({"services": {"scoring": {"database": {"existingSecret": ""}}}}, "services.scoring.database.existingSecret"),
        ({"redis": {"nodes": ["redis:6379,redis2:6379"]}}, "/redis/nodes/0"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(values, message):
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert message in str(refused.value)


# --- The binary takes the chart's configuration ----------------------------------------------


def alp_binary() -> Path:
    binary = Path(os.environ.get("ALP_BIN", ROOT / "target" / "debug" / "alp"))
    assert binary.exists(), f"{binary} is missing: build it first (cargo build --bin alp)"
    return binary


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port: int, entry: str) -> str:
    result = subprocess.run(
        ["grpcurl", "-plaintext", "-max-time", "2", "-d", json.dumps({"service": entry}),
         f"127.0.0.1:{port}", "grpc.health.v1.Health/Check"],
        capture_output=True, text=True, check=False,
    )
    return result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_alp_serve_runs_with_the_charts_environment_and_answers_its_probes(default, service, tmp_path):
    """The pod's environment, verbatim but for loopback addresses and an SQLite database: every
    variable parses, and the probes' health entries answer SERVING."""
    import time

    binary = alp_binary()
    database = f"sqlite://{tmp_path / 'db.sqlite'}?mode=rwc"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALP_")}
    env.update(config_of(default, service))
    assert env["ALP_LISTEN"].startswith("0.0.0.0:") and env["ALP_METRICS_LISTEN"].startswith("0.0.0.0:")
    env.update(ALP_DATABASE_URL=database)
    migrated = subprocess.run([str(binary), "migrate", service], env=env, capture_output=True, text=True, check=False)
    assert migrated.returncode == 0, migrated.stderr
    container_args = container(of_kind(default, "Rollout")[name(service)])["args"]
    # A free port can be taken by another process before the server binds it: then new ports.
    for _ in range(3):
        port, metrics = free_port(), free_port()
        env.update(ALP_LISTEN=f"127.0.0.1:{port}", ALP_METRICS_LISTEN=f"127.0.0.1:{metrics}")
        server = subprocess.Popen(
            [str(binary), *container_args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            server.wait(timeout=1)
        except subprocess.TimeoutExpired:
            break
        assert "Address already in use" in (refused := server.stderr.read()), refused
    try:
        entry = health_entry_from_proto(service)
        deadline = time.monotonic() + 20
        while '"SERVING"' not in (answer := health(port, entry)):
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, answer
            time.sleep(0.2)
        assert '"SERVING"' in health(port, entry + "/live")
    finally:
        server.terminate()
        server.wait(timeout=40)
    assert server.returncode == 0, server.stderr.read()


# --- The container image -----------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_multi_stage_small_and_runs_alp_as_the_charts_non_root_user(default):
    from dockerfile_parse import DockerfileParser

    dockerfile = DockerfileParser(path=str(ROOT / "Dockerfile"))
    stages = [i for i in dockerfile.structure if i["instruction"] == "FROM"]
    assert len(stages) == 2, "build, then run"
    final = dockerfile.structure[dockerfile.structure.index(stages[-1]):]
    assert stages[-1]["value"].startswith("gcr.io/distroless/cc-debian12"), "glibc only, no shell or package manager"
    (copy,) = [i for i in final if i["instruction"] == "COPY"]
    assert copy["value"].startswith("--from=build "), "only the binary reaches the final image"
    (user,) = [i for i in final if i["instruction"] == "USER"]
    uid, gid = (int(part) for part in user["value"].split(":"))
    assert uid != 0 and gid != 0
    pod = of_kind(default, "Rollout")[name("scheduler")]["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid), "the chart runs the image's own user"
    (entrypoint,) = [i for i in final if i["instruction"] == "ENTRYPOINT"]
    assert json.loads(entrypoint["value"]) == ["/usr/local/bin/alp"]
    build = " ".join(i["value"] for i in dockerfile.structure if i["instruction"] == "RUN")
    assert "cargo build --release --locked --bin alp" in build
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"target", ".git", ".tools"} <= set(ignored), "the build context stays small"
