"""Deployment files: the Dockerfile, the Kubernetes manifests in conf/k8s, the Grafana dashboard.

Nothing here needs a network, a cluster or a Docker daemon. Core manifests are validated against
the Kubernetes API's JSON schemas that the kubernetes-validate package bundles, for fixed
Kubernetes versions, in strict mode (an unknown or misspelt field is an error). KEDA's
ScaledObject and TriggerAuthentication are custom resources outside those schemas: they are
validated against cloudcoil-models-keda, pydantic models generated from KEDA's CRDs, strictly
too (no unknown fields, no type coercion, only the wire names). The dashboard's PromQL is parsed
with promql-parser, so its metric names are read from the syntax tree, not guessed.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import promql_parser
import pydantic
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication

from auth.playback import from_settings as playback_signer
from auth.tokens import from_settings as access_tokens
from backends.catalog import engines
from backends.jobs.streams import GROUP, keys
from conf import Settings, SettingsError, load
from gateway.cli import parser as cli_parser

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "conf" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = ROOT / "conf" / "grafana" / "clipsync-edge.json"

# Fixed Kubernetes versions the manifests must be valid for: the oldest minor release still
# supported upstream when this was written, and the newest whose schemas kubernetes-validate
# 1.37 bundles. Moving them is a deliberate change, never a side effect of an upgrade.
K8S_VERSIONS = ("1.35.0", "1.37.0")
KUSTOMIZATION = "kustomization.yaml"
SECRET_EXAMPLE = "secret.example.yaml"  # documentation of the Secret's keys, never applied
KEDA_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "ScaledObject": ScaledObject,
    "TriggerAuthentication": TriggerAuthentication,
}
NON_ROOT_UID = 10001

Doc = dict[str, Any]

# Every metric the gateway exposes. This list must match the README's metrics tables (Caching
# and Operations, Metrics): a dashboard query naming anything else would show "No data".
GATEWAY_METRICS = frozenset(
    {
        "clipsync_cache_hits_total",
        "clipsync_cache_misses_total",
        "clipsync_cache_evictions_total",
        "clipsync_cache_bytes",
        "clipsync_cache_builds_total",
        "clipsync_cache_coalesced_total",
        "clipsync_redis_errors_total",
        "clipsync_redis_latency_seconds",
        "clipsync_redis_breaker_open",
        "clipsync_http_requests_total",
        "clipsync_http_request_duration_seconds",
        "clipsync_http_response_bytes_total",
        "clipsync_startup_seconds",
        "clipsync_packaging_seconds",
        "clipsync_storage_request_seconds",
        "clipsync_storage_errors_total",
        "clipsync_jobs_queue_depth",
        "clipsync_job_duration_seconds",
        "clipsync_uploads_in_progress",
        "clipsync_logins_failed_total",
    }
)
HISTOGRAMS = frozenset(
    {
        "clipsync_redis_latency_seconds",
        "clipsync_http_request_duration_seconds",
        "clipsync_packaging_seconds",
        "clipsync_storage_request_seconds",
        "clipsync_job_duration_seconds",
    }
)
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


# Loading ---------------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def documents(path: Path) -> list[Doc]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    assert docs, f"{path.name} holds no document"
    assert all(isinstance(doc, dict) for doc in docs), path.name
    return docs


def resources() -> Iterator[tuple[str, Doc]]:
    """(file name, object) of every Kubernetes object in conf/k8s."""
    for path in manifest_files():
        if path.name != KUSTOMIZATION:
            for doc in documents(path):
                yield path.name, doc


def only(kind: str, name: str | None = None) -> Doc:
    found = [
        doc
        for _, doc in resources()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment(component: str) -> Doc:
    found = [
        doc
        for _, doc in resources()
        if doc["kind"] == "Deployment"
        and doc["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, component
    return found[0]


def pod_spec(doc: Doc) -> Doc:
    spec: Doc = doc["spec"]["template"]["spec"]
    return spec


def container(doc: Doc) -> Doc:
    containers = pod_spec(doc)["containers"]
    assert len(containers) == 1
    first: Doc = containers[0]
    return first


def config_env() -> dict[str, str]:
    """The environment the pods get: the ConfigMap, then the example Secret (envFrom order)."""
    data = dict(only("ConfigMap")["data"])
    data.update(only("Secret")["stringData"])
    return data


def settings_of_pods() -> Settings:
    return load(env=config_env())


def validate_core(doc: Doc, version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def validate_keda(doc: Doc) -> None:
    model = KEDA_MODELS[doc["kind"]]
    # extra="forbid": no unknown field at any depth; strict: "1" is not 1 (KEDA's trigger
    # metadata is a map of strings, its replica counts are integers); by_name=False: only the
    # CRD's own spelling (scaleTargetRef, not the Python name scale_target_ref).
    model.model_validate(doc, strict=True, extra="forbid", by_alias=True, by_name=False)


# The manifests parse and validate -------------------------------------------------------------


def test_every_manifest_parses_and_the_kustomization_lists_them() -> None:
    names = {path.name for path in manifest_files()}
    assert {KUSTOMIZATION, SECRET_EXAMPLE} <= names
    kustomization = documents(K8S / KUSTOMIZATION)[0]
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == names - {KUSTOMIZATION, SECRET_EXAMPLE}
    for file, doc in resources():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), file
        assert doc["metadata"]["name"], file
        # Namespace-agnostic: `kubectl -n` or an overlay chooses it.
        assert "namespace" not in doc["metadata"], file


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_manifests_validate_strictly(version: str) -> None:
    checked = 0
    for file, doc in resources():
        if doc["kind"] in KEDA_MODELS:
            continue
        try:
            validate_core(doc, version)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{file}: {doc['kind']} invalid for Kubernetes {version}: {where}: {exc}")
        checked += 1
    assert checked >= 9


def test_keda_resources_validate_against_the_crd_models() -> None:
    kinds = set()
    for file, doc in resources():
        if doc["kind"] in KEDA_MODELS:
            assert doc["apiVersion"] == "keda.sh/v1alpha1", file
            validate_keda(doc)
            kinds.add(doc["kind"])
    assert kinds == set(KEDA_MODELS)


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        target: Any = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return change


CONTAINER = ("spec", "template", "spec", "containers", 0)


@pytest.mark.parametrize(
    ("kind", "name", "change"),
    [
        # A port as a string, a misspelt probe, a replica count in words, a percentage as text.
        ("Deployment", "clipsync-gateway", _set((*CONTAINER, "ports", 0, "containerPort"), "8080")),
        ("Deployment", "clipsync-gateway", _set((*CONTAINER, "readinesProbe"), {})),
        ("Deployment", "clipsync-worker", _set(("spec", "replicas"), "two")),
        (
            "HorizontalPodAutoscaler",
            "clipsync-gateway",
            _set(("spec", "metrics", 0, "resource", "target", "averageUtilization"), "70%"),
        ),
        ("Service", "clipsync-gateway", _set(("spec", "ports", 0, "protocol"), 6)),
    ],
    ids=["port-as-string", "misspelt-field", "replicas-in-words", "percent-as-text", "bad-type"],
)
def test_broken_core_manifests_fail(kind: str, name: str, change: Callable[[Doc], None]) -> None:
    broken = copy.deepcopy(only(kind, name))
    validate_core(broken, K8S_VERSIONS[0])  # valid before the change
    change(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(broken, K8S_VERSIONS[0])


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        # KEDA reads trigger metadata as strings: an unquoted number is refused by the API.
        ("ScaledObject", _set(("spec", "triggers", 1, "metadata", "pendingEntriesCount"), 1000)),
        ("ScaledObject", _set(("spec", "minReplicas"), 1)),  # the HPA's name, not KEDA's
        ("ScaledObject", _set(("spec", "maxReplicaCount"), "10")),
        ("TriggerAuthentication", _set(("spec", "secretTargetRef", 0, "secret"), "x")),
    ],
    ids=["metadata-not-a-string", "unknown-field", "count-as-string", "unknown-nested-field"],
)
def test_broken_keda_resources_fail(kind: str, change: Callable[[Doc], None]) -> None:
    broken = copy.deepcopy(only(kind))
    validate_keda(broken)
    change(broken)
    with pytest.raises(pydantic.ValidationError):
        validate_keda(broken)


def test_keda_resources_need_their_required_fields() -> None:
    broken = copy.deepcopy(only("ScaledObject"))
    del broken["spec"]["scaleTargetRef"]
    with pytest.raises(pydantic.ValidationError, match="scaleTargetRef"):
        validate_keda(broken)


# What the manifests say --------------------------------------------------------------------


def port_number(doc: Doc, port: int | str) -> int:
    """A container port given by number or by name, as a number."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container(doc)["ports"] if p["name"] == port]
    assert len(named) == 1, f"no container port named {port}"
    number: int = named[0]
    return number


def test_gateway_probes_and_port() -> None:
    gateway = deployment("gateway")
    main = container(gateway)
    settings = settings_of_pods()
    assert [p["containerPort"] for p in main["ports"]] == [settings.server.port] == [8080]
    assert settings.server.host == "0.0.0.0"
    probes = {kind: main[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    # Start-up must not depend on Redis or the catalog answering: the liveness endpoint.
    assert main["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in (*probes.values(), main["startupProbe"]["httpGet"]):
        assert port_number(gateway, probe["port"]) == 8080
    # /readyz may take its 2 s per component before it answers.
    assert main["readinessProbe"]["timeoutSeconds"] > 2
    service = only("Service")
    assert service["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]
    assert port_number(gateway, service["spec"]["ports"][0]["targetPort"]) == 8080


def test_gateway_drains_before_it_stops() -> None:
    gateway = deployment("gateway")
    pre_stop = container(gateway)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 5 <= pre_stop < pod_spec(gateway)["terminationGracePeriodSeconds"] - 30
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # The autoscalers own the replica counts; an applied count would reset them.
    assert "replicas" not in gateway["spec"]
    assert "replicas" not in deployment("worker")["spec"]


def test_worker_runs_jobs_with_room_to_hand_them_back() -> None:
    worker, gateway = deployment("worker"), deployment("gateway")
    main = container(worker)
    assert main["args"][0] == "worker"
    # Its one port is Prometheus' (--metrics-port), and no probe asks it.
    assert main["ports"] == [{"name": "metrics", "containerPort": 9100}]
    assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(main)
    grace = pod_spec(worker)["terminationGracePeriodSeconds"]
    assert grace > pod_spec(gateway)["terminationGracePeriodSeconds"]
    assert grace >= 120
    requests = main["resources"]["requests"]
    assert float(requests["cpu"]) >= 2
    # No Service reaches the workers.
    for _, doc in resources():
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"].items()
            assert not selector <= worker["spec"]["template"]["metadata"]["labels"].items()


def test_container_commands_are_real_cli_invocations() -> None:
    """The image's entry point is `clipsync`; each container's args must parse as its CLI."""
    expected = {
        "gateway": ["serve", "--workers", "2"],
        "worker": ["worker", "--metrics-port", "9100"],
    }
    for component, args in expected.items():
        assert container(deployment(component))["args"] == args
    job = only("Job")
    assert container(job)["args"] == ["db", "upgrade"]
    for _, doc in resources():
        if doc["kind"] in ("Deployment", "Job"):
            main = container(doc)
            assert "command" not in main  # keep the image's ENTRYPOINT
            assert main["image"].startswith("clipsync-edge")
            cli_parser().parse_args(main["args"])


def pod_templates() -> Iterator[tuple[str, Doc]]:
    for file, doc in resources():
        if doc["kind"] in ("Deployment", "Job"):
            yield file, doc


def test_pods_are_hardened() -> None:
    for file, doc in pod_templates():
        pod = pod_spec(doc)
        assert pod["securityContext"]["runAsNonRoot"] is True, file
        assert pod["securityContext"]["runAsUser"] == NON_ROOT_UID, file
        main = container(doc)
        context = main["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, file
        assert context["allowPrivilegeEscalation"] is False, file
        assert context["capabilities"]["drop"] == ["ALL"], file
        # A read-only root needs a writable /tmp: temporary files, the metrics folder.
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], file
        resources_ = main["resources"]
        assert {"cpu", "memory"} <= resources_["requests"].keys(), file
        assert {"cpu", "memory"} <= resources_["limits"].keys(), file
        # The Secret comes after the ConfigMap: a key in both takes the Secret's value.
        env_from = [next(iter(source)) for source in main["envFrom"]]
        assert env_from == ["configMapRef", "secretRef"], file
        assert main["envFrom"][0]["configMapRef"]["name"] == only("ConfigMap")["metadata"]["name"]
        assert main["envFrom"][1]["secretRef"]["name"] == only("Secret")["metadata"]["name"]


def test_pods_turn_off_service_links() -> None:
    """Kubernetes adds CLIPSYNC_GATEWAY_SERVICE_HOST and the like for Services named
    clipsync-*, and the settings loader refuses unknown CLIPSYNC_ variables: without
    enableServiceLinks: false no pod of this namespace would start."""
    with pytest.raises(SettingsError, match="CLIPSYNC_GATEWAY_SERVICE_HOST"):
        load(env={**config_env(), "CLIPSYNC_GATEWAY_SERVICE_HOST": "10.0.0.1"})
    for file, doc in pod_templates():
        assert pod_spec(doc)["enableServiceLinks"] is False, file


def test_config_and_secret_are_settings_the_gateway_accepts() -> None:
    settings = settings_of_pods()  # raises SettingsError on any unknown or invalid value
    assert settings.jobs.gateway_workers == 0  # transcodes only on workers
    assert settings.jobs.queue == "redis"
    assert settings.cache.redis_url.startswith("redis")
    assert "://" in settings.storage.library  # shared storage, not a pod's own folder
    # The catalog password stays out of the ConfigMap: asyncpg reads PGPASSWORD instead.
    catalog = engines.parse(settings.catalog.url)
    assert catalog.drivername.startswith("postgresql")
    assert catalog.password is None
    secret = only("Secret")["stringData"]
    assert "PGPASSWORD" in secret
    # The keys pass the checks `clipsync serve` makes at start-up (length, algorithm).
    assert access_tokens(settings.auth) is not None
    assert playback_signer(settings) is not None
    # Placeholders say so, and nothing secret sits in the ConfigMap.
    assert all("CHANGE-ME" in value for value in secret.values() if value)
    for key in only("ConfigMap")["data"]:
        assert not re.search(r"SECRET|PASSWORD|TOKEN|_KEY$", key), key


def test_hpa_scales_the_gateway_on_cpu() -> None:
    hpa = only("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    gateway = deployment("gateway")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": gateway["metadata"]["name"],
    }
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "cpu" in container(gateway)["resources"]["requests"]  # utilization is of the request


def test_scaled_object_follows_the_job_queue() -> None:
    scaled = only("ScaledObject")
    worker = deployment("worker")
    assert scaled["spec"]["scaleTargetRef"] == {"name": worker["metadata"]["name"]}
    assert scaled["spec"]["minReplicaCount"] >= 1  # delayed retries need a running worker
    settings = settings_of_pods()
    stream = keys(settings.jobs.redis_prefix)[0]
    triggers = {t["name"]: t for t in scaled["spec"]["triggers"]}
    assert all(t["type"] == "redis-streams" for t in triggers.values())
    assert all(t["metadata"]["stream"] == stream for t in triggers.values())
    pending = triggers["pending"]["metadata"]
    assert pending["consumerGroup"] == GROUP
    assert pending["pendingEntriesCount"] == "1000"
    # The backlog trigger leaves out the group, so KEDA measures XLEN: one pod per
    # worker_concurrency jobs.
    backlog = triggers["backlog"]["metadata"]
    assert "consumerGroup" not in backlog
    assert backlog["streamLength"] == str(settings.jobs.worker_concurrency)
    # KEDA resolves addressFromEnv in the worker container's environment (its ConfigMap).
    config = only("ConfigMap")["data"]
    queue = urlsplit(settings.jobs.redis_url or settings.cache.redis_url)
    for trigger in triggers.values():
        address = config[trigger["metadata"]["addressFromEnv"]]
        assert address == f"{queue.hostname}:{queue.port or 6379}"  # the queue's own Redis
        auth = only("TriggerAuthentication", trigger["authenticationRef"]["name"])
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == only("Secret")["metadata"]["name"]
            assert ref["key"] in only("Secret")["stringData"]


def size_mb(value: str) -> float:
    match = re.fullmatch(r"(\d+)([kmg]?)", value.lower())
    assert match, value
    scale = {"": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024}[match.group(2)]
    return int(match.group(1)) * scale


def test_ingress_streams_uploads_and_hides_internal_endpoints() -> None:
    ingress = only("Ingress")
    notes = ingress["metadata"]["annotations"]
    settings = settings_of_pods()
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    body = notes["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body == "0" or size_mb(body) > settings.ingest.max_upload_mb
    service = only("Service")
    port_names = {p["name"] for p in service["spec"]["ports"]}
    paths = []
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in port_names
            paths.append(path["path"])
    for public in ("/vod", "/v", "/api"):
        assert public in paths
    for internal in ("/metrics", "/healthz", "/readyz"):
        assert not any(internal == p or internal.startswith(p.rstrip("/") + "/") for p in paths)


# Dockerfile -----------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continuation line ends the Dockerfile"
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, arguments.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [arguments for instruction, arguments in stage if instruction == name]


def test_dockerfile_final_stage() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder, then the image"
    builder, final = stages[0], stages[-1]
    base = instructions(builder, "FROM")[0].split()[0]
    assert instructions(final, "FROM")[0].split()[0] == base  # the venv needs the same Python
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", text, re.MULTILINE)
    (user,) = instructions(final, "USER")
    uid = user.split(":")[0].replace("${UID}", str(NON_ROOT_UID))
    assert uid not in ("root", "0")
    assert f"UID={NON_ROOT_UID}" in instructions(final, "ARG")
    assert uid == str(NON_ROOT_UID)  # the Kubernetes manifests' runAsUser
    (healthcheck,) = instructions(final, "HEALTHCHECK")
    assert "urllib.request" in healthcheck
    assert "http://127.0.0.1:" in healthcheck
    assert "/healthz" in healthcheck
    assert "curl" not in healthcheck
    assert [json.loads(a) for a in instructions(final, "ENTRYPOINT")] == [["clipsync"]]
    assert [json.loads(a) for a in instructions(final, "CMD")] == [["serve"]]
    assert instructions(final, "EXPOSE") == ["8080"]
    env = " ".join(instructions(final, "ENV"))
    for setting in (
        "CLIPSYNC_SERVER__HOST=0.0.0.0",
        "CLIPSYNC_STORAGE__LIBRARY=/data/library",
        "CLIPSYNC_CATALOG__URL=sqlite:////data/",
    ):
        assert setting in env
    assert any("/data" in volume for volume in instructions(final, "VOLUME"))
    # The final stage installs nothing: no compiler, no build tools, no package manager runs.
    commands = " ".join(instructions(final, "RUN"))
    assert not re.search(r"\b(apt-get|apt|apk|pip|build-essential|gcc|g\+\+|cc|make)\b", commands)
    assert any("--from=builder" in copied for copied in instructions(final, "COPY"))


def test_dockerfile_builder_installs_the_package_with_tracing_not_tests() -> None:
    builder = dockerfile_stages()[0]
    installs = [
        shlex.split(command) for command in instructions(builder, "RUN") if "pip install" in command
    ]
    assert len(installs) == 1
    words = installs[0]
    assert ".[otel]" in words  # the package and the OpenTelemetry extra, not [test]
    assert not any("test" in word for word in words if "[" in word)
    assert "--only-binary=:all:" in words  # wheels only: no compiler can be needed
    assert words[words.index("-c") + 1] == "tests/constraints.txt"  # the versions CI tested
    assert not re.search(r"build-essential|gcc|apt-get", " ".join(instructions(builder, "RUN")))


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    for excluded in (".venv", ".git", "data", "bench", "**/node_modules", "**/__pycache__"):
        assert excluded in rules
    assert "tests" in rules
    assert "!tests/constraints.txt" in rules  # the pins the build uses


# Grafana dashboard --------------------------------------------------------------------------

# Grafana replaces these before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def dashboard_panels(panels: list[Doc]) -> Iterator[Doc]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def datasources(node: Any) -> Iterator[Any]:
    """Every ``datasource`` value anywhere in the dashboard's JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasources(item)


def metric_names(expr: str) -> set[str]:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr}"
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)  # ValueError on bad PromQL
    return names


def exposed(name: str) -> bool:
    if name in GATEWAY_METRICS:
        return name not in HISTOGRAMS  # a histogram is only queried through its series
    base, _, series = name.rpartition("_")
    return base in HISTOGRAMS and f"_{series}" in HISTOGRAM_SERIES


def test_dashboard_queries_known_metrics_through_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    used: set[str] = set()
    panels = list(dashboard_panels(dashboard["panels"]))
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            assert "targets" not in panel  # rows only group panels
            continue
        assert panel["datasource"] == chosen, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", chosen) == chosen, panel["title"]
            for name in metric_names(target["expr"]):
                assert exposed(name), f"{panel['title']}: {name} is not a gateway metric"
                used.add(name.removesuffix("_bucket"))
    # The design's KPIs each have their panel.
    for needed in (
        "clipsync_startup_seconds",
        "clipsync_http_requests_total",
        "clipsync_http_request_duration_seconds",
        "clipsync_http_response_bytes_total",
        "clipsync_cache_hits_total",
        "clipsync_cache_misses_total",
        "clipsync_jobs_queue_depth",
        "clipsync_job_duration_seconds",
    ):
        assert needed in used, needed
    # No datasource anywhere (annotations included) is pinned to one Grafana's uid.
    builtin = {"type": "grafana", "uid": "-- Grafana --"}
    for source in datasources(dashboard):
        assert source in (chosen, builtin), source


def test_known_metrics_are_the_documented_ones() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in sorted(GATEWAY_METRICS):
        assert f"`{name}`" in readme, f"{name} is not in the README's metrics tables"


def test_dashboard_check_catches_unknown_metrics_and_bad_promql() -> None:
    assert metric_names("sum(rate(clipsync_cache_hits_total[$__rate_interval]))") == {
        "clipsync_cache_hits_total"
    }
    assert not exposed("clipsync_http_requests")  # the counter without _total
    assert not exposed("clipsync_packaging_seconds")  # a histogram's bare name
    assert exposed("clipsync_packaging_seconds_bucket")
    with pytest.raises(ValueError, match="parenthesis"):
        metric_names("sum(rate(clipsync_cache_hits_total[5m])")
