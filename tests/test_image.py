"""The CPU image, built from the project's unchanged Dockerfile and run as compose runs it.

No image registry is reachable here, so the ``python:3.11-slim`` base is made the way such an
image is made: Debian bookworm (``debootstrap --variant=minbase``) with Debian's Python, imported
as ``localhost/python:3.11-slim``. ``buildah bud`` then builds the Dockerfile's ``cpu`` variant
on it, and ``buildah run`` serves the image with a read-only root and a tmpfs ``/tmp``.
(``podman run`` cannot start containers in this kind of sandbox; ``buildah run`` with chroot
isolation can.) The server listens on loopback only.

Needs root, debootstrap, buildah and podman (``make test-tools`` installs them), Debian's
package registry for the base (only on the first run: the base image is kept, marked with
``BASE_LABEL``) and Python's package registry for the image's own ``pip install``. Skips, and
says which, when one of them is missing.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ASTRONAUT, REPO
from tools.loopback import free_port

pytestmark = pytest.mark.slow

BASE_IMAGE = "localhost/python:3.11-slim"
# Bumped whenever the way the base is made changes, so that a kept base is made again.
BASE_LABEL = "dev.pfvit.test-base=debootstrap-bookworm-minbase-1"
IMAGE = "localhost/pfvit-serving:cpu-test"
STORAGE = ["--storage-driver", "vfs"]
BASE_PACKAGES = ["python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates"]
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What the image may weigh at most (its size is reported in docs/deploy.md).
MAX_IMAGE_BYTES = 600 * 1024 * 1024
REF_BOX = np.array([181.1, 62.2, 267.7, 172.1])  # the fixture's face, as in the other tests
TOOLS = {"debootstrap": "debootstrap", "buildah": "buildah", "podman": "podman"}
REGISTRY_DOWN = re.compile(
    r"Failed getting release file|Couldn't download|Temporary failure resolving|Could not resolve|"
    r"Network is unreachable|Connection refused|Connection timed out|Failed to fetch",
    re.I,
)


def sh(cmd: list[str], timeout_s: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)


def require_tools() -> None:
    """The tools, installed from Debian (as ``make test-tools`` does) when they are missing."""
    if os.geteuid() != 0:
        pytest.skip("building the image here needs root (debootstrap, chroot and buildah's vfs storage)")
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"{', '.join(missing)} missing and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update = sh(["apt-get", "update", "-qq"], 300, env=env)
    install = sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], 600, env=env)
    if update.returncode or install.returncode or any(shutil.which(t) is None for t in TOOLS):
        pytest.skip(
            f"could not install {', '.join(missing)} from Debian's registry: {(install.stderr or update.stderr)[-300:]}"
        )


def host_debian_mirror() -> str | None:
    """The Debian mirror this host's apt uses (deb822 or one-line sources); None: debootstrap's default."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        match = re.search(r"^URIs:\s*(\S+)", path.read_text(), re.M)
        if match and "security" not in match.group(1):
            return match.group(1)
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if path.is_file():
            match = re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\b", path.read_text(), re.M)
            if match:
                return match.group(1)
    return None


def base_is_kept() -> bool:
    proc = sh(["podman", *STORAGE, "image", "inspect", BASE_IMAGE], 60)
    if proc.returncode:
        return False
    labels = (json.loads(proc.stdout)[0].get("Labels") or {}) if proc.stdout.strip() else {}
    key, value = BASE_LABEL.split("=", 1)
    return labels.get(key) == value


def make_base(workdir: Path) -> None:
    """Debian bookworm with Python, the host's CA bundle and no EXTERNALLY-MANAGED marker (the
    python:3.11-slim image has none), imported as ``BASE_IMAGE``."""
    rootfs = workdir / "rootfs"
    mirror = host_debian_mirror()
    proc = sh(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), *([mirror] if mirror else [])], 900)
    if proc.returncode:
        log = proc.stdout + proc.stderr
        if REGISTRY_DOWN.search(log):
            pytest.skip(f"Debian's package registry is unreachable, so the base image cannot be made: {log[-300:]}")
        raise AssertionError(f"debootstrap failed: {log[-2000:]}")
    shutil.copy("/etc/resolv.conf", rootfs / "etc" / "resolv.conf")
    install = (
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
        f"{' '.join(BASE_PACKAGES)} >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*"
    )
    proc = sh(["chroot", str(rootfs), "/bin/sh", "-c", install], 900)
    if proc.returncode:
        if REGISTRY_DOWN.search(proc.stderr):
            pytest.skip(f"Debian's package registry is unreachable: {proc.stderr[-300:]}")
        raise AssertionError(f"apt-get in the base failed: {proc.stderr[-2000:]}")
    (rootfs / "etc" / "resolv.conf").write_text("")  # the container runtime provides its own
    if HOST_CA_BUNDLE.is_file():  # the registries this host reaches are trusted inside too
        shutil.copy(HOST_CA_BUNDLE, rootfs / HOST_CA_BUNDLE.relative_to("/"))
    for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    changes = [
        "--change",
        f"LABEL {BASE_LABEL}",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        'CMD ["python3"]',
    ]
    proc = subprocess.run(
        ["podman", *STORAGE, "import", *changes, "-", BASE_IMAGE],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tar.wait(timeout=60)
    assert proc.returncode == 0 and tar.returncode == 0, proc.stderr
    shutil.rmtree(rootfs)


def pip_conf_for_build(workdir: Path) -> Path:
    """This host's package-index settings (pip's configuration and ``PIP_*`` variables), for the
    build's ``pip install``: only indexes reached over HTTP(S), checked against the CA bundle
    the base carries. Mounted at the build's /etc/pip.conf: the Dockerfile stays unchanged and
    nothing of it ends up in the image."""
    settings: dict[str, str] = {"cert": str(HOST_CA_BUNDLE)}
    proc = sh([sys.executable, "-m", "pip", "config", "list"], 60)
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        key, _, value = line.partition("=")
        section, _, name = key.partition(".")
        if section in ("global", "install") and name in ("index-url", "extra-index-url", "trusted-host"):
            settings[name] = value.strip().strip("'\"")
    for name in ("index-url", "extra-index-url", "trusted-host"):
        value = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if value:
            settings[name] = value
    for name in ("index-url", "extra-index-url"):
        if name in settings:
            urls = [u for u in settings[name].split() if u.startswith(("http://", "https://"))]
            if urls:
                settings[name] = " ".join(urls)
            else:
                del settings[name]
    config = configparser.ConfigParser()
    config["global"] = settings
    path = workdir / "pip.conf"
    with path.open("w") as f:
        config.write(f)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Iterator[dict]:
    require_tools()
    workdir = tmp_path_factory.mktemp("image")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if not base_is_kept():
        make_base(workdir)
    timings["base_s"] = time.perf_counter() - start
    start = time.perf_counter()
    pip_conf = pip_conf_for_build(workdir)
    build = sh(
        [
            "buildah",
            *STORAGE,
            "bud",
            "--isolation",
            "chroot",
            "--pull-never",
            "--build-arg",
            "VARIANT=cpu",
            "--build-arg",
            f"PYTHON_IMAGE={BASE_IMAGE}",
            "--volume",
            f"{pip_conf}:/etc/pip.conf:ro",
            "-f",
            str(REPO / "Dockerfile"),
            "-t",
            IMAGE,
            str(REPO),
        ],  # fmt: skip
        1200,
    )
    if build.returncode and re.search(
        r"Could not find a version|No matching distribution|Failed to establish a new connection|"
        r"Max retries exceeded|Temporary failure in name resolution",
        build.stdout + build.stderr,
    ):
        pytest.skip(
            f"the image's pip install cannot reach the package registry: {(build.stdout + build.stderr)[-400:]}"
        )
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    timings["build_s"] = time.perf_counter() - start
    inspect = sh(["podman", *STORAGE, "image", "inspect", IMAGE], 60)
    assert inspect.returncode == 0, inspect.stderr
    info = json.loads(inspect.stdout)[0]
    try:
        yield {"size": int(info["Size"]), "cmd": info["Config"]["Cmd"], "timings": timings}
    finally:
        sh(["buildah", *STORAGE, "rmi", IMAGE], 300)


@pytest.fixture(scope="module")
def container(image) -> Iterator[dict]:
    """A working container of the image, its root made read-only (as compose's ``read_only``)."""
    ctr = sh(["buildah", *STORAGE, "from", "--pull-never", IMAGE], 300)
    assert ctr.returncode == 0, ctr.stderr
    name = ctr.stdout.strip().splitlines()[-1]
    root = None
    try:
        mounted = sh(["buildah", *STORAGE, "mount", name], 120)
        assert mounted.returncode == 0, mounted.stderr
        root = Path(mounted.stdout.strip())
        # buildah run creates this file in the root before starting; it cannot once the root is read-only.
        (root / "run" / ".containerenv").touch()
        for cmd in (["mount", "--bind", str(root), str(root)], ["mount", "-o", "remount,bind,ro", str(root)]):
            proc = sh(cmd, 60)
            assert proc.returncode == 0, proc.stderr
        yield {"name": name, "root": root}
    finally:
        if root is not None:
            sh(["umount", str(root)], 60)
        sh(["buildah", *STORAGE, "rm", name], 300)


def buildah_run(container: dict, command: list[str], env: dict[str, str], **popen) -> subprocess.Popen:
    """``buildah run`` of the container with a tmpfs /tmp (as compose's ``tmpfs``), as the image's user."""
    for key, value in env.items():
        proc = sh(["buildah", *STORAGE, "config", "--env", f"{key}={value}", container["name"]], 60)
        assert proc.returncode == 0, proc.stderr
    return subprocess.Popen(
        [
            "buildah",
            *STORAGE,
            "run",
            "--isolation",
            "chroot",
            "--mount",
            "type=tmpfs,destination=/tmp",
            container["name"],
            "--",
            *command,
        ],
        start_new_session=True,
        **popen,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this test started: buildah and the service
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_the_cpu_image_serves_read_only_and_has_no_torch(image, container, tmp_path, record_property):
    record_property("image_bytes", image["size"])
    print(
        f"\nCPU image: {image['size'] / 1e6:.0f} MB; base {image['timings']['base_s']:.0f} s, build "
        f"{image['timings']['build_s']:.0f} s"
    )
    assert image["size"] < MAX_IMAGE_BYTES
    root = container["root"]
    site = list(root.glob("opt/venv/lib/python3*/site-packages"))
    assert site and (site[0] / "onnxruntime").is_dir() and (site[0] / "service").is_dir()
    assert not list(site[0].glob("torch*")) and not (site[0] / "training").exists()

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = buildah_run(
        container,
        image["cmd"],
        {"PFVIT_HOST": "127.0.0.1", "PFVIT_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError(
                f"the image was not ready within 120 s: {(tmp_path / 'serve.log').read_text()[-3000:]}"
            )
        response = httpx.post(
            url + "/v1/recognize", files={"images": ("astronaut.png", ASTRONAUT.read_bytes(), "image/png")}, timeout=60
        )
        assert response.status_code == 200, response.text
        (face,) = response.json()["images"][0]["faces"]
        box = np.array([face["box"][k] for k in ("x1", "y1", "x2", "y2")])
        assert np.abs(box - REF_BOX).max() < 3.0 and face["label"] == "happiness"
        models = httpx.get(url + "/v1/models", timeout=10).json()
        assert models["ready"] and "CPUExecutionProvider" in json.dumps(models)
    finally:
        stop(proc)
        log.close()

    # Nothing but /tmp is writable, and no torch can be imported, as the image's own user.
    check = buildah_run(
        container,
        [
            "python",
            "-c",
            "import importlib.util, os, sys; "
            "open('/tmp/probe', 'w').write('x'); "
            "writable = os.access('/app', os.W_OK) or os.access('/opt/venv', os.W_OK); "
            "sys.exit(f'torch={importlib.util.find_spec(\"torch\")} uid={os.getuid()} writable={writable}')",
        ],  # fmt: skip
        {},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = check.communicate(timeout=120)
    assert "torch=None uid=10001 writable=False" in out, out
