"""Thread sizing that honours the container's CPU limit.

Kubernetes CPU limits, ``docker --cpus`` and ECS set a CFS quota, which leaves the affinity
mask whole: a pod limited to 2 CPUs on a 64-core node still sees 64 CPUs there. These tests
build fake cgroup trees (v2 ``cpu.max``; v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) and
a fake ``/proc/self/cgroup`` in a temporary folder, and pretend the host has 64 cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.runtime import CpuBudget, cpu_quota_cores, usable_cores

HOST_CORES = 64


@pytest.fixture
def big_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """An affinity mask and a CPU count of 64 cores."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(HOST_CORES)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: HOST_CORES)


def cgroup_v2(tmp_path: Path, cpu_max: dict[str, str], own: str = "/") -> tuple[Path, Path]:
    """A unified (v2) hierarchy with ``cpu.max`` in the given folders; returns (root, proc file)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    for folder, value in cpu_max.items():
        (root / folder.strip("/")).mkdir(parents=True, exist_ok=True)
        (root / folder.strip("/") / "cpu.max").write_text(value + "\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"0::{own}\n")
    return root, proc


def cgroup_v1(
    tmp_path: Path, quota_us: int, period_us: int = 100_000, own: str = "/", mount: str = "cpu,cpuacct"
) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    (root / mount).mkdir(parents=True)
    (root / mount / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (root / mount / "cpu.cfs_period_us").write_text(f"{period_us}\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"12:memory:{own}\n4:{mount}:{own}\n1:name=systemd:{own}\n")
    return root, proc


def test_a_2_cpu_quota_on_a_64_core_host_sizes_for_2_cores_v2(tmp_path: Path, big_host) -> None:
    root, proc = cgroup_v2(tmp_path, {"/": "200000 100000"})
    assert cpu_quota_cores(root, proc) == 2.0
    assert usable_cores(root, proc) == 2


def test_a_2_cpu_quota_on_a_64_core_host_sizes_for_2_cores_v1(tmp_path: Path, big_host) -> None:
    # The container's cgroup namespace is not private: /proc/self/cgroup names a host path
    # that the container's mount does not have, whose root is the container's own cgroup.
    root, proc = cgroup_v1(tmp_path, 200_000, own="/kubepods/burstable/pod1/abc")
    assert usable_cores(root, proc) == 2


@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [
        ("150000 100000", 2),
        ("50000 100000", 1),
        ("1000 100000", 1),
        ("max 100000", HOST_CORES),
        ("6400000 100000", HOST_CORES),
    ],
)
def test_fractional_quotas_round_up_never_below_one_and_never_above_the_mask(
    tmp_path: Path, big_host, cpu_max: str, cores: int
) -> None:
    root, proc = cgroup_v2(tmp_path, {"/": cpu_max})
    assert usable_cores(root, proc) == cores


def test_the_tightest_quota_of_the_process_cgroup_and_its_ancestors_counts(tmp_path: Path, big_host) -> None:
    own = "/kubepods.slice/pod1.slice/container.scope"
    root, proc = cgroup_v2(
        tmp_path, {"/kubepods.slice/pod1.slice": "300000 100000", own: "max 100000", "/other": "100000 100000"}, own=own
    )
    assert usable_cores(root, proc) == 3
    (root / own.strip("/") / "cpu.max").write_text("250000 100000\n")
    assert cpu_quota_cores(root, proc) == 2.5
    assert usable_cores(root, proc) == 3


def test_v1_without_a_quota_and_a_missing_tree_leave_the_affinity_mask(tmp_path: Path, big_host) -> None:
    root, proc = cgroup_v1(tmp_path, -1, mount="cpu")
    assert cpu_quota_cores(root, proc) is None
    assert usable_cores(root, proc) == HOST_CORES
    assert usable_cores(tmp_path / "absent", tmp_path / "absent-proc") == HOST_CORES


def test_a_narrow_affinity_mask_wins_over_a_wide_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    root, proc = cgroup_v2(tmp_path, {"/": "400000 100000"})
    assert usable_cores(root, proc) == 1
    assert CpuBudget(affinity_cores=8, quota_cores=None).cores == 8


def test_the_service_sizes_every_pool_for_the_quota_and_reports_it(
    tmp_path: Path, big_host, monkeypatch: pytest.MonkeyPatch, settings
) -> None:
    """A 2-CPU quota on a 64-core host: 2 detector threads, emotion sessions with 2 ONNX Runtime
    threads, and /v1/models and pfvit_cpu_cores say so."""
    from fastapi.testclient import TestClient

    import service.runtime as runtime
    from service.app import create_app
    from tests.conftest import wait_ready

    root, proc = cgroup_v2(tmp_path, {"/": "200000 100000"})
    monkeypatch.setattr(runtime, "CGROUP_ROOT", root)
    monkeypatch.setattr(runtime, "PROC_SELF_CGROUP", proc)
    sized = settings.model_copy(update={"detect_threads": 0, "intra_op_threads": 0})
    with TestClient(create_app(sized)) as client:
        wait_ready(client)
        state = client.app.state.service
        assert state.detect_threads == 2 and state.intra_op_threads == 2
        pipeline = state.require_pipeline()
        assert pipeline.detector.threads.threads == 2
        assert {s.get_session_options().intra_op_num_threads for s in pipeline.model.sessions.values()} == {2}
        cpu = client.get("/v1/models").json()["cpu"]
        assert cpu == {
            "usable_cores": 2,
            "affinity_cores": HOST_CORES,
            "quota_cores": 2.0,
            "detect_threads": 2,
            "intra_op_threads": 2,
            "computing_slots": state.computing_slots,
        }
        assert "pfvit_cpu_cores 2.0" in client.get("/metrics").text


def test_without_a_narrower_limit_onnx_runtime_keeps_its_own_default(
    tmp_path: Path, big_host, monkeypatch: pytest.MonkeyPatch, settings
) -> None:
    import service.runtime as runtime
    from service.state import ServiceState

    root, proc = cgroup_v2(tmp_path, {"/": "max 100000"})
    monkeypatch.setattr(runtime, "CGROUP_ROOT", root)
    monkeypatch.setattr(runtime, "PROC_SELF_CGROUP", proc)
    state = ServiceState(settings.model_copy(update={"detect_threads": 0, "intra_op_threads": 0}))
    assert state.detect_threads == HOST_CORES and state.intra_op_threads == 0
    assert ServiceState(settings.model_copy(update={"intra_op_threads": 3})).intra_op_threads == 3
