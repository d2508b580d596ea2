"""ONNX Runtime sessions: the one place they are created and providers are chosen.

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as available even on a machine without
a usable GPU and then silently falls back to the CPU, so the providers a session *actually*
uses (``session.get_providers()``) are what we report, never what we asked for.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from service.errors import ModelLoadError

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

# The exception types ONNX Runtime raises for a file it cannot load or run (corrupt, wrong graph, ...).
ORT_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, ValueError, OSError) + tuple(
    getattr(_ort_state, name)
    for name in (
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "InvalidProtobuf",
        "InvalidGraph",
        "NotImplemented",
    )
    if hasattr(_ort_state, name)
)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_ALIASES = {"cpu": CPU, "cuda": CUDA, "gpu": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
# Providers whose tensors live on the GPU: IOBinding keeps outputs there until copied back once.
GPU_PROVIDERS = (CUDA, TENSORRT)


@dataclass(frozen=True)
class ProviderOptions:
    """Options of the CUDA and TensorRT providers (``PFVIT_CUDA_*``, ``PFVIT_TRT_*``)."""

    cuda_device_id: int = 0
    cuda_arena_extend_strategy: str = "kSameAsRequested"
    cuda_mem_limit_mb: int = 0
    cuda_cudnn_conv_algo_search: str = "HEURISTIC"
    cuda_copy_in_default_stream: bool = True
    trt_fp16: bool = False
    trt_engine_cache_dir: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderOptions:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})

    def for_provider(self, provider: str) -> dict[str, str]:
        """The options ONNX Runtime takes for ``provider`` (strings, as its C API wants them);
        none for the CPU or any provider we do not configure."""
        if provider == CUDA:
            options = {
                "device_id": str(self.cuda_device_id),
                "arena_extend_strategy": self.cuda_arena_extend_strategy,
                "cudnn_conv_algo_search": self.cuda_cudnn_conv_algo_search,
                "do_copy_in_default_stream": "1" if self.cuda_copy_in_default_stream else "0",
            }
            if self.cuda_mem_limit_mb:
                options["gpu_mem_limit"] = str(self.cuda_mem_limit_mb * 1024 * 1024)
            return options
        if provider == TENSORRT:
            options = {"device_id": str(self.cuda_device_id), "trt_fp16_enable": "True" if self.trt_fp16 else "False"}
            if self.trt_engine_cache_dir:
                options |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": self.trt_engine_cache_dir}
            return options
        return {}

    def for_providers(self, providers: list[str]) -> list[dict[str, str]]:
        """``provider_options`` for ``InferenceSession``: one dict per provider, in order."""
        return [self.for_provider(p) for p in providers]


def device_of(session: ort.InferenceSession) -> str:
    """Where the session's outputs are best left by IOBinding: ``"cuda"`` or ``"cpu"``."""
    return "cuda" if session.get_providers()[0] in GPU_PROVIDERS else "cpu"


def resolve_providers(spec: str) -> list[str]:
    """Turn the ``providers`` setting into an ordered provider list, CPU always last.

    ``auto`` takes CUDA when this ONNX Runtime build offers it; ``cpu``/``cuda``/``tensorrt`` or
    a comma-separated list of provider names are taken as given (unknown names are an error,
    not silently dropped); TensorRT is followed by CUDA unless the list places CUDA itself.
    """
    available = ort.get_available_providers()
    spec = spec.strip()
    if spec.lower() == "auto":
        chosen = [CUDA] if CUDA in available else []
    else:
        chosen = []
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            name = _ALIASES.get(item.lower(), item)
            if name not in available:
                raise ModelLoadError(
                    f"execution provider {name!r} was requested but this ONNX Runtime build offers "
                    f"only {available}; install the 'gpu' extra for CUDA"
                )
            if name not in chosen:
                chosen.append(name)
    if TENSORRT in chosen and CUDA not in chosen and CUDA in available:
        # TensorRT takes the subgraphs it supports; CUDA, not the CPU, should run the rest.
        chosen.insert(chosen.index(TENSORRT) + 1, CUDA)
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def required_provider(spec: str, providers: list[str]) -> str | None:
    """The provider a session must really use: the first one named in an explicit ``providers``
    setting (``cuda``, or a list), never for ``auto``, never the CPU (always there)."""
    if spec.strip().lower() == "auto" or not providers or providers[0] == CPU:
        return None
    return providers[0]


def create_session(
    path: str | Path,
    *,
    providers: list[str],
    intra_op_threads: int = 0,
    cpu_arena: bool = False,
    required: str | None = None,
    provider_options: ProviderOptions | None = None,
) -> ort.InferenceSession:
    """Create an inference session for one ONNX file.

    ``cpu_arena`` turns ONNX Runtime's CPU memory arena on. Off (the default), tensors are
    allocated and freed per run; on, the arena keeps the peak of the largest request ever
    served for the life of the process (one 4000 px photo: 1189 MiB held afterwards against
    364 MiB off), while small requests cost the same either way (docs/deploy.md, "Memory").

    ``required``: a provider the session must use (``required_provider``). ONNX Runtime falls
    back to the CPU silently when, say, the CUDA libraries or the driver cannot be loaded;
    asked for by name, that is an error here, never a quiet slow service.

    ``provider_options``: the CUDA and TensorRT options; each provider gets its own, and only
    when it is in ``providers``.

    Raises:
        ModelLoadError: the file cannot be loaded by ONNX Runtime (the cause is chained), or
            ``required`` is not among the providers the session actually uses.
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    # Requests already run in parallel threads; a second pool per session only oversubscribes.
    opts.inter_op_num_threads = 1
    # Idle pool threads must sleep, not spin: the cascade runs many small graphs one after the
    # other and several sessions share the cores, so spinning threads steal the CPU that the
    # next graph needs (MTCNN on the 512 px fixture, 2 threads: 121 ms spinning, 62 ms not).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_cpu_mem_arena = cpu_arena
    options = (provider_options or ProviderOptions()).for_providers(providers)
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers, provider_options=options)
    except ORT_ERRORS as exc:
        raise ModelLoadError(f"ONNX Runtime could not load {path}: {exc}") from exc
    actual = session.get_providers()
    if required is not None and required not in actual:
        raise ModelLoadError(
            f"{Path(path).name}: {required} was asked for (PFVIT_PROVIDERS) but ONNX Runtime could not use it and "
            f"would run on {actual}. For CUDA: an NVIDIA driver for CUDA 12 (525 or newer) and the `gpu` extra "
            f"(onnxruntime-gpu 1.26, CUDA 12 + cuDNN 9) are needed; PFVIT_PROVIDERS=auto falls back to the CPU instead."
        )
    if providers[0] not in actual:
        log.warning(
            "%s: asked for %s, ONNX Runtime uses %s (PFVIT_PROVIDERS=auto falls back; /v1/models and "
            "pfvit_model_info report the provider in use)",
            Path(path).name,
            providers,
            actual,
        )
    return session


@dataclass(frozen=True)
class SessionSpec:
    """How every session of a model is created (:func:`create_session`'s arguments but the
    file): the one path by which the service, the tools and evaluation load a model, so that
    none runs it differently from the others."""

    providers: tuple[str, ...] = (CPU,)
    intra_op_threads: int = 0
    cpu_arena: bool = False
    required: str | None = None
    provider_options: ProviderOptions | None = None

    def create(self, path: str | Path) -> ort.InferenceSession:
        return create_session(
            path,
            providers=list(self.providers),
            intra_op_threads=self.intra_op_threads,
            cpu_arena=self.cpu_arena,
            required=self.required,
            provider_options=self.provider_options,
        )

    @property
    def device_id(self) -> int:
        """The GPU of sessions that run on one (``PFVIT_CUDA_DEVICE_ID``)."""
        return self.provider_options.cuda_device_id if self.provider_options is not None else 0


def primary_provider(session: ort.InferenceSession) -> str:
    """The execution provider that runs the session's nodes first (what we report)."""
    return str(session.get_providers()[0])


# Where the kernel shows this process its cgroups; module attributes so that tests can point
# them at fake files.
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 mounts the cpu controller under one of these names (distributions differ).
_V1_CPU_MOUNTS = ("cpu,cpuacct", "cpu", "cpuacct,cpu")


@dataclass(frozen=True)
class CpuBudget:
    """The CPU this process may use, and the whole cores the service sizes its threads for.

    ``affinity_cores``: CPUs in the affinity mask (what a container's cpuset narrows).
    ``quota_cores``: the tightest CFS quota over the process's cgroup and its ancestors, in
    cores (``quota / period``; what Kubernetes CPU limits, ``docker --cpus`` and ECS set), or
    ``None`` when there is none. A quota does not narrow the affinity mask: a pod limited to
    2 CPUs on a 64-core node still sees 64 CPUs there.
    """

    affinity_cores: int
    quota_cores: float | None = None

    @property
    def cores(self) -> int:
        """The smaller of the two; a fractional quota rounds up (1.5 CPUs: 2 threads, which
        the quota shares), never below 1."""
        if self.quota_cores is None:
            return self.affinity_cores
        return max(1, min(self.affinity_cores, math.ceil(self.quota_cores)))


def _affinity_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _own_cgroups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """The process's cgroup path in the v2 hierarchy and in v1's cpu controller (``None``
    where that hierarchy is absent), from ``/proc/self/cgroup`` lines ``ID:CONTROLLERS:PATH``."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return "/", "/"
    v2 = v1 = None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path or "/"
        elif "cpu" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _cgroup_dirs(mount: Path, path: str) -> list[Path]:
    """The process's cgroup folder under ``mount`` and every ancestor up to ``mount``: a limit
    on any of them bounds the process. In a container whose cgroup namespace is not private
    (cgroup v1, mostly), ``/proc/self/cgroup`` names a host path that the container's mount
    does not have: the mount's root is then the container's own cgroup."""
    own = mount / path.strip("/")
    if not own.is_dir():
        return [mount]
    dirs = [own]
    while dirs[-1] != mount and mount in dirs[-1].parents:
        dirs.append(dirs[-1].parent)
    return dirs


def _read_quota_v2(folder: Path) -> float | None:
    """``cpu.max``: ``"max 100000"`` (no limit) or ``"<quota> <period>"`` in microseconds."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _read_quota_v1(folder: Path) -> float | None:
    """``cpu.cfs_quota_us`` (-1: no limit) over ``cpu.cfs_period_us``."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_quota_cores(cgroup_root: Path | None = None, proc_cgroup: Path | None = None) -> float | None:
    """The tightest CFS CPU quota on this process, in cores, over cgroup v2 (``cpu.max``) and
    v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) and every ancestor cgroup; ``None``
    when there is none or the files cannot be read (not Linux)."""
    root = CGROUP_ROOT if cgroup_root is None else cgroup_root
    v2_path, v1_path = _own_cgroups(PROC_SELF_CGROUP if proc_cgroup is None else proc_cgroup)
    quotas: list[float] = []
    if v2_path is not None and (root / "cgroup.controllers").is_file():
        quotas += [q for d in _cgroup_dirs(root, v2_path) if (q := _read_quota_v2(d)) is not None]
    if v1_path is not None:
        for name in _V1_CPU_MOUNTS:
            if (root / name).is_dir():
                quotas += [q for d in _cgroup_dirs(root / name, v1_path) if (q := _read_quota_v1(d)) is not None]
                break
    return min(quotas) if quotas else None


def cpu_budget(cgroup_root: Path | None = None, proc_cgroup: Path | None = None) -> CpuBudget:
    """The affinity mask and the CPU quota of this process (:class:`CpuBudget`)."""
    return CpuBudget(affinity_cores=_affinity_cores(), quota_cores=cpu_quota_cores(cgroup_root, proc_cgroup))


def usable_cores(cgroup_root: Path | None = None, proc_cgroup: Path | None = None) -> int:
    """Whole CPU cores this process may use: the smallest of its affinity mask (which
    container CPU sets narrow) and its cgroup CPU quota (which CPU limits set), rounded up,
    never below 1. ``cgroup_root`` and ``proc_cgroup`` default to the kernel's files."""
    return cpu_budget(cgroup_root, proc_cgroup).cores


def single_threaded_blas() -> None:
    """Limit numpy's BLAS (OpenBLAS) to one thread for the whole process.

    The service's parallelism is its own: the detector's threads and ONNX Runtime's pools.
    The detector's crops are small matrix products, and OpenBLAS's default pool (a thread per
    core) spins after each of them on the cores those already use (docs/benchmarks.md,
    "The baseline moved, and why").
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
