"""The deployment files, validated offline (no Docker daemon, no cluster, no network).

- docker-compose.yml (+ the GPU override) against the Compose specification's JSON schema, vendored in
  check-jsonschema, and for what the schema cannot see (healthchecks behind service_healthy, ports).
- Kubernetes: every overlay rendered with `kubectl kustomize`, every object validated in strict mode by
  kubernetes-validate (it ships the Kubernetes schemas), the Prometheus Operator's custom resources against
  deploy/schemas/; then the wiring (probes, headless Services, HPAs and the prometheus-adapter rules that
  feed them, PDBs, GPUs, the checkpoint volume, images).
- The Dockerfile: a lint (COPY sources exist and are not dockerignored, stages resolve, pins agree).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILES = [ROOT / "docker-compose.yml", DEPLOY / "docker" / "compose.gpu.yml"]
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
OVERLAYS = ["cpu-dev", "gpu", "gpu-external-redis"]
# Oldest and newest Kubernetes the manifests are checked against (preStop `sleep` needs 1.30+).
K8S_VERSIONS = ["1.32.0", "1.37.0"]
MODEL_SERVICES = ["llm", "speech", "audio", "vision"]
GRPC_PORT, METRICS_PORT = 50051, 9090
# Custom resources kubernetes-validate has no schema for, and the schema each is checked against instead.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): DEPLOY / "schemas" / "servicemonitor.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): DEPLOY / "schemas" / "prometheusrule.schema.json",
}
# Secrets an operator creates by hand (never committed); every other reference must resolve.
EXTERNAL_SECRETS = {"gpu": {"vita-api-keys"}, "gpu-external-redis": {"vita-api-keys", "vita-redis"}}


def service_has_entrypoint(name: str) -> bool:
    return (ROOT / "services" / name / "__main__.py").is_file()


# ------------------------------------------------------------------------------------------ compose


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files_match_the_compose_specification(path):
    # check-jsonschema's vendored copy of the compose-spec schema: no network.
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wiring():
    compose = load_yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    vita = {name for name, svc in services.items() if svc.get("command", [None])[0] == "serve"}
    assert vita == {*MODEL_SERVICES, "orchestrator", "gateway"}
    check_compose_gateway(services)
    for name in vita - {"gateway"}:
        svc = services[name]
        assert svc["command"] == ["serve", name] and service_has_entrypoint(name)
        env = svc["environment"]
        assert env["VITA_PORT"] == str(GRPC_PORT) and env["VITA_METRICS_PORT"] == str(METRICS_PORT)
        assert env["VITA_HOST"] == "0.0.0.0"
        assert "shared.healthcheck" in svc["healthcheck"]["test"]
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    # Start order: the orchestrator waits for Redis and every model service to be healthy.
    orchestrator = services["orchestrator"]
    assert orchestrator["depends_on"] == {name: {"condition": "service_healthy"} for name in ["redis", *MODEL_SERVICES]}
    for name, svc in services.items():
        for dependency, condition in (svc.get("depends_on") or {}).items():
            assert dependency in services
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}, which has no healthcheck"
    env = orchestrator["environment"]
    for name in MODEL_SERVICES:
        assert env[f"VITA_ORCH_{name.upper()}_ADDRESS"] == f"dns:///{name}:{GRPC_PORT}"
    assert env["VITA_ORCH_REDIS_URL"] == "redis://redis:6379/0"
    # Redis persists with AOF on a named volume.
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    # Every bind-mounted file exists.
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def check_compose_gateway(services: dict) -> None:
    """The HTTP gateway: its own port, an HTTP health check, and the orchestrator healthy before it."""
    gateway = services["gateway"]
    assert gateway["command"] == ["serve", "gateway"] and (ROOT / "apps" / "gateway" / "__main__.py").is_file()
    assert gateway["environment"]["VITA_PORT"] == "8080"
    assert gateway["environment"]["VITA_GATEWAY_ORCHESTRATOR"] == f"orchestrator:{GRPC_PORT}"
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert gateway["depends_on"] == {"orchestrator": {"condition": "service_healthy"}}


def interpolate_default(value: str) -> str:
    """A Compose value with its ${VAR:-default} references replaced by their defaults."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_gpu_override_gives_each_model_service_its_own_gpu():
    override = load_yaml(DEPLOY / "docker" / "compose.gpu.yml")
    devices = {}
    for name in MODEL_SERVICES:
        svc = override["services"][name]
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        # `count: 1` gives every service the first GPU: each names its device, settable per service.
        assert "count" not in device, f"{name}: count reserves the same first GPU for every service"
        (device_id,) = device["device_ids"]
        assert f"VITA_{name.upper()}_GPU" in device_id
        devices[name] = interpolate_default(device_id)
        assert svc["build"]["args"]["VARIANT"] == "gpu"
    assert len(set(devices.values())) == len(MODEL_SERVICES), devices
    assert "deploy" not in override["services"]["orchestrator"]
    assert override["services"]["orchestrator"]["build"]["args"]["VARIANT"] == "gpu"


def test_compose_publishes_on_loopback_and_has_no_default_password():
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    published = {name: svc["ports"] for name, svc in services.items() if "ports" in svc}
    assert set(published) == {"orchestrator", "gateway", "prometheus", "grafana"}
    for name, ports in published.items():
        for port in ports:
            host_ip = interpolate_default(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback by default"
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    # ${VAR:?message}: Compose refuses to start without it; no admin/admin fallback.
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password


def test_compose_does_not_restart_a_failed_start_forever():
    services = load_yaml(ROOT / "docker-compose.yml")["services"]
    for name in [*MODEL_SERVICES, "orchestrator"]:
        policy = services[name]["restart"]
        # Exit 2 (bad checkpoint or setting) would loop under always/unless-stopped.
        match = re.fullmatch(r"on-failure:(\d+)", policy)
        assert match and 1 <= int(match.group(1)) <= 10, f"{name}: restart {policy!r}"


def test_prometheus_scrapes_every_compose_service():
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    scraped = {}
    for job in config["scrape_configs"]:
        for sd in job["dns_sd_configs"]:
            assert sd["type"] == "A" and sd["port"] == METRICS_PORT  # A records: every replica
            scraped.update({name: job["job_name"] for name in sd["names"]})
    assert set(scraped) == {*MODEL_SERVICES, "orchestrator"}
    assert set(load_yaml(ROOT / "docker-compose.yml")["services"]) >= set(scraped)
    # The alerting rules are loaded from where Compose mounts them.
    mounts = {
        volume.split(":")[1]: volume.split(":")[0]
        for volume in load_yaml(ROOT / "docker-compose.yml")["services"]["prometheus"]["volumes"]
    }
    assert [mounts[path] for path in config["rule_files"]] == ["./deploy/prometheus/alerts.yml"]


def test_grafana_provisioning_points_at_the_dashboard():
    compose = load_yaml(ROOT / "docker-compose.yml")
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "vita.yml")["providers"][0]
    dashboard_mount = mounts["./deploy/grafana/vita-dashboard.json"]
    assert Path(dashboard_mount).parent == Path(provider["options"]["path"])
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    json.loads((DEPLOY / "grafana" / "vita-dashboard.json").read_text())


# --------------------------------------------------------------------------------------- dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerfile_lint():
    instructions = dockerfile_instructions()
    global_args, stages = {}, []
    for word, rest in instructions:
        if word == "FROM":
            break
        if word == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default
    ignored = dockerignore_patterns()
    for word, rest in instructions:
        if word == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            base, name = match.groups()
            for variant in ("cpu", "gpu"):
                resolved = re.sub(r"\$\{(\w+)\}", lambda m: variant if m.group(1) == "VARIANT" else global_args[m.group(1)], base)
                assert ":" in resolved or resolved in stages, f"FROM {base} resolves to unknown stage {resolved}"
            stages.append(name)
        elif word in ("COPY", "ADD"):
            parts = [p for p in rest.split() if not p.startswith("--")]
            assert not any(p.startswith("--from") for p in rest.split()), "no multi-stage COPY expected"
            for source in parts[:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} does not exist"
                assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is dockerignored"
        elif word in ("RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK", "ENV", "EXPOSE", "WORKDIR", "USER", "ARG", "LABEL"):
            pass
        else:
            pytest.fail(f"unexpected instruction {word}")
    assert global_args["VARIANT"] == "cpu" and {"torch-cpu", "torch-gpu", "runtime"} <= set(stages)
    # The image installs the same torch as pyproject.toml pins.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (torch_pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    assert torch_pin == f"torch=={global_args['TORCH_VERSION']}"
    text = dict(instructions)  # the last ENTRYPOINT / HEALTHCHECK / USER is the one that counts
    assert json.loads(text["ENTRYPOINT"]) == ["vita"] and "vita" in pyproject["project"]["scripts"]
    assert "shared.healthcheck" in text["HEALTHCHECK"] and (ROOT / "shared" / "healthcheck.py").is_file()
    assert text["EXPOSE"].split() == [str(GRPC_PORT), str(METRICS_PORT)]
    assert "USER" in text and text["USER"] != "root"


# --------------------------------------------------------------------------------------- kubernetes

KUBECTL = shutil.which("kubectl")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: it renders the kustomize overlays (apt/snap package kubectl)")
    result = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / "k8s" / "overlays" / request.param)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return request.param, [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def test_every_object_validates_strictly(rendered):
    overlay, docs = rendered
    failures = []
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_SCHEMAS:
            schema = json.loads(CRD_SCHEMAS[key].read_text())
            errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
            failures += [f"{doc['kind']}/{doc['metadata']['name']}: {e}" for e in errors]
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                failures.append(f"{doc['kind']}/{doc['metadata']['name']} ({version}): {error.message} at {list(error.path)}")
            except kubernetes_validate.SchemaNotFoundError:
                failures.append(f"{key}: no schema; add it to CRD_SCHEMAS with a schema file")
    assert not failures, f"{overlay}:\n" + "\n".join(failures)


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_services_probes_scaling_and_budgets(rendered):
    overlay, docs = rendered
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    hpas, pdbs = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "PodDisruptionBudget")
    assert set(deployments) == {f"vita-{name}" for name in [*MODEL_SERVICES, "orchestrator", "gateway"]}
    check_k8s_gateway(deployments.pop("vita-gateway"), services["vita-gateway"], hpas["vita-gateway"],
                      pdbs.get("vita-gateway"))
    for name, deployment in deployments.items():
        service_name = name.removeprefix("vita-")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        container = _container(deployment)
        assert container["args"] == ["serve", service_name] and service_has_entrypoint(service_name)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == GRPC_PORT, f"{name}: {probe} must be a gRPC health probe"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 10 + 5  # drain + preStop
        service = services[name]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        if service_name in MODEL_SERVICES:
            assert service["spec"]["clusterIP"] == "None", f"{name}: round_robin needs a headless Service"
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
        target = hpas[name]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert hpas[name]["spec"]["maxReplicas"] >= 2
        check_disruption_budget(name, deployment, hpas[name], pdbs.get(name))


def check_k8s_gateway(deployment: dict, service: dict, hpa: dict, pdb: dict | None) -> None:
    """The HTTP gateway: HTTP health probes and port, /metrics behind the port the ServiceMonitor scrapes,
    the orchestrator's Service as its target."""
    container = _container(deployment)
    assert container["args"] == ["serve", "gateway"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8080}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    env = {var["name"]: var.get("value") for var in container["env"]}
    assert env["VITA_PORT"] == "8080" and env["VITA_GATEWAY_ORCHESTRATOR"] == f"vita-orchestrator:{GRPC_PORT}"
    ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert ports == {"http": "http", "metrics": "http"}
    assert service["metadata"]["labels"]["vita-serve/metrics"] == "true"
    check_disruption_budget("vita-gateway", deployment, hpa, pdb)


def check_disruption_budget(name: str, deployment: dict, hpa: dict, pdb: dict | None) -> None:
    """A budget only where two or more replicas run, and one that lets a drain go on while one serves:
    with one replica `maxUnavailable: 1` protects nothing and `minAvailable: 1` blocks every drain."""
    min_replicas = min(deployment["spec"]["replicas"], hpa["spec"].get("minReplicas", 1))
    if pdb is None:
        assert min_replicas == 1, f"{name}: {min_replicas} replicas and no PodDisruptionBudget"
        return
    assert min_replicas >= 2, f"{name}: a PodDisruptionBudget with a single replica"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    spec = pdb["spec"]
    if "minAvailable" in spec:
        assert 1 <= spec["minAvailable"] < min_replicas, (name, spec)
    else:
        assert 1 <= spec["maxUnavailable"] < min_replicas, (name, spec)


def test_high_availability_component_gives_model_services_budgets(tmp_path):
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: it renders the kustomize overlays (apt/snap package kubectl)")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize takes relative paths only.
        "resources": [os.path.relpath(DEPLOY / "k8s" / "overlays" / "gpu", tmp_path)],
        "components": [os.path.relpath(DEPLOY / "k8s" / "components" / "high-availability", tmp_path)],
    }))
    result = subprocess.run([KUBECTL, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    deployments, hpas = by_kind(docs, "Deployment"), by_kind(docs, "HorizontalPodAutoscaler")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    assert set(pdbs) == set(deployments)
    for name, deployment in deployments.items():
        check_disruption_budget(name, deployment, hpas[name], pdbs[name])


def test_config_and_secret_references_resolve(rendered):
    overlay, docs = rendered
    config_maps, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")
    services = by_kind(docs, "Service")
    missing_secrets = set()
    for deployment in by_kind(docs, "Deployment").values():
        container = _container(deployment)
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["name"] not in secrets:
                missing_secrets.add(ref["name"])
    assert missing_secrets == EXTERNAL_SECRETS.get(overlay, set())
    # The orchestrator's targets are the headless Services, on their gRPC port.
    orchestrator_config = next(cm["data"] for name, cm in config_maps.items() if name.startswith("vita-orchestrator-config"))
    for name in MODEL_SERVICES:
        target = orchestrator_config[f"VITA_ORCH_{name.upper()}_ADDRESS"]
        assert target == f"dns:///vita-{name}:{GRPC_PORT}"
        assert services[f"vita-{name}"]["spec"]["clusterIP"] == "None"
    common = next(cm["data"] for name, cm in config_maps.items() if name.startswith("vita-config"))
    assert common["VITA_PORT"] == str(GRPC_PORT) and common["VITA_METRICS_PORT"] == str(METRICS_PORT)
    assert common["VITA_HOST"] == "0.0.0.0" and "VITA_OTLP_ENDPOINT" in common


def test_images_name_a_registry_and_a_pull_policy(rendered):
    overlay, docs = rendered
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        container = _container(doc)
        registry = container["image"].split("/")[0]
        # A registry host has a dot or a port (or is localhost); a bare name means Docker Hub implicitly.
        assert "/" in container["image"] and ("." in registry or ":" in registry or registry == "localhost"), (
            f"{doc['metadata']['name']}: image {container['image']} names no registry"
        )
        assert container["imagePullPolicy"] in ("Always", "IfNotPresent"), doc["metadata"]["name"]
        if overlay.startswith("gpu") and doc["kind"] == "Deployment":
            # The gpu overlay's tag (`gpu`) is mutable: nodes must not keep running a stale copy.
            assert container["imagePullPolicy"] == "Always"


def test_the_checkpoint_volume_binds_and_only_model_pods_mount_it(rendered):
    overlay, docs = rendered
    claims = by_kind(docs, "PersistentVolumeClaim")
    if not overlay.startswith("gpu"):
        assert "vita-checkpoint" not in claims
        return
    claim = claims["vita-checkpoint"]["spec"]
    assert claim["accessModes"] == ["ReadOnlyMany"]
    # Without a class the cluster's default (block storage, ReadWriteOnce only) leaves it Pending.
    assert claim.get("storageClassName"), "the ReadOnlyMany checkpoint claim needs a file-storage class"
    for name, deployment in by_kind(docs, "Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        claimed = {v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
        env = {var["name"]: var.get("value") for var in _container(deployment).get("env", [])}
        if name in ("vita-orchestrator", "vita-gateway"):
            # Pending on an unbindable claim must not take the public API down with it.
            assert not claimed and "VITA_CHECKPOINT" not in env, name
        else:
            assert claimed == {"vita-checkpoint"}, name
            mount = next(m for m in _container(deployment)["volumeMounts"] if m["name"] == "checkpoint")
            assert mount["readOnly"] and env["VITA_CHECKPOINT"].startswith(mount["mountPath"] + "/")
    for config_map in by_kind(docs, "ConfigMap").values():
        assert "VITA_CHECKPOINT" not in config_map.get("data", {}), "every pod reads the ConfigMaps"


def test_gpus_are_requested_only_where_a_model_runs(rendered):
    overlay, docs = rendered
    for name, deployment in by_kind(docs, "Deployment").items():
        resources = _container(deployment)["resources"]
        wants_gpu = overlay.startswith("gpu") and name not in ("vita-orchestrator", "vita-gateway")
        for section in ("requests", "limits"):
            assert (resources.get(section, {}).get("nvidia.com/gpu") == 1) == wants_gpu, (name, section)
        assert "memory" in resources["requests"] and "memory" in resources["limits"]


def test_redis_is_persistent_or_external(rendered):
    overlay, docs = rendered
    statefulsets = by_kind(docs, "StatefulSet")
    orchestrator = _container(by_kind(docs, "Deployment")["vita-orchestrator"])
    env = {var["name"]: var for var in orchestrator.get("env", [])}
    if overlay.endswith("external-redis"):
        assert not statefulsets and "vita-redis" not in by_kind(docs, "Service")
        assert env["VITA_ORCH_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "vita-redis", "key": "url"}
        return
    redis = statefulsets["vita-redis"]
    args = _container(redis)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in _container(redis)["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    assert "VITA_ORCH_REDIS_URL" not in env


def test_servicemonitor_scrapes_every_service(rendered):
    overlay, docs = rendered
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = {
        name for name, service in by_kind(docs, "Service").items()
        if selector.items() <= service["metadata"].get("labels", {}).items()
    }
    assert selected == {f"vita-{name}" for name in [*MODEL_SERVICES, "orchestrator", "gateway"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} == {"metrics"}
    # kube-prometheus-stack selects ServiceMonitors and PrometheusRules by its Helm release name.
    (rule,) = by_kind(docs, "PrometheusRule").values()
    for resource in (monitor, rule):
        assert resource["metadata"]["labels"].get("release"), f"{resource['kind']} lacks the `release` label"


def test_prometheus_rule_carries_the_alerts_file(rendered):
    _, docs = rendered
    (rule,) = by_kind(docs, "PrometheusRule").values()
    groups = load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"]
    assert rule["spec"]["groups"] == groups, (
        "deploy/k8s/base/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: "
        "run `python scripts/gen_prometheusrule.py`"
    )


# ------------------------------------------------------------------------------- prometheus-adapter

ADAPTER = DEPLOY / "k8s" / "prometheus-adapter"


def adapter_metric_names() -> set[str]:
    """Names the adapter serves: the metrics its series queries select, renamed as its rules say."""
    served = set()
    for rule in load_yaml(ADAPTER / "rules.yaml")["rules"]:
        (names,) = re.findall(r'__name__=~"\^?([^"$]+)\$?"', rule["seriesQuery"])
        prefix, alternatives = re.fullmatch(r"(\w*)\(([\w|]+)\)", names).groups()
        pattern = rule["name"]["matches"]
        for metric in (prefix + a for a in alternatives.split("|")):
            served.add(re.sub(pattern, rule["name"]["as"].replace("${", "\\g<").replace("}", ">"), metric))
        assert {"namespace", "pod"} == {k for k in rule["resources"]["overrides"]}
    return served


def test_adapter_rules_serve_declared_gauges():
    from tests.deploy.test_dashboard import declared_series

    series, _ = declared_series()
    served = adapter_metric_names()
    assert served and all(series.get(name) == "gauge" for name in served), {n: series.get(n) for n in served}


def test_adapter_manifest_validates():
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: it renders the kustomize overlays (apt/snap package kubectl)")
    result = subprocess.run([KUBECTL, "kustomize", str(ADAPTER)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (config_map,) = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(config_map, version, strict=True)
    assert config_map["metadata"]["name"] == "vita-prometheus-adapter-rules"
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == load_yaml(ADAPTER / "rules.yaml")


def test_pods_metric_autoscalers_use_what_the_adapter_serves(rendered):
    overlay, docs = rendered
    served = adapter_metric_names()
    used = set()
    for name, hpa in by_kind(docs, "HorizontalPodAutoscaler").items():
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                used.add(metric["pods"]["metric"]["name"])
                assert metric["pods"]["target"]["type"] == "AverageValue", name
    assert used <= served, f"{overlay}: HPAs use metrics the adapter does not serve: {used - served}"
    if overlay.startswith("gpu"):
        # Queue depth, not only occupancy, drives scale-out.
        assert {"vita_llm_waiting_requests", "vita_speech_queued_segments", "vita_vision_queued_tiles"} <= used
