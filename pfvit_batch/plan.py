"""How many recognition actors a Ray cluster gets, and what each one reserves.

Ray schedules by the logical CPUs each task and actor reserves. Actors that reserve every CPU
leave none for the tasks that read the files and decode the videos, and the job stops: on a
2-CPU instance two actors at one CPU each never finished. So the actors together reserve the
cluster's CPUs less a spare share for reading, and each reading task reserves ``READ_CPUS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Logical CPUs one reading task (a photo's bytes, a video's sampled frames) reserves.
READ_CPUS = 0.5
# Logical CPUs an actor reserves at least (on a one-CPU instance nearly all of it is spare).
MIN_ACTOR_CPUS = 0.05


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    num_cpus: float  # logical CPUs each actor reserves
    num_gpus: float  # GPUs each actor reserves (0: it runs on the CPU)
    threads: int  # detector threads, and ONNX Runtime threads per session, in each actor

    @property
    def providers(self) -> str:
        """``PFVIT_PROVIDERS`` of the actors: CUDA and nothing else on a GPU, so that an actor
        placed where CUDA cannot load fails instead of running on the CPU."""
        return "cuda" if self.num_gpus else "cpu"


def spare_cpus(cpus: float) -> float:
    """Logical CPUs left to the reading tasks: one, or a tenth of a big cluster's."""
    return max(1.0, cpus / 10.0)


def plan_actors(
    cpus: float, gpus: float = 0.0, *, actors: int | None = None, threads: int = 1, gpus_per_actor: float = 0.0
) -> ActorPlan:
    """The actor pool for a cluster of ``cpus`` logical CPUs and ``gpus`` GPUs.

    On the CPU: one actor per ``threads`` CPUs (each runs its images one at a time, on
    ``threads`` threads). On GPUs: ``gpus / gpus_per_actor`` actors. ``actors`` overrides the
    count. Either way the actors share the CPUs the reading tasks leave (``spare_cpus``).

    Raises:
        ValueError: impossible numbers (no CPU, fewer GPUs than one actor asks for).
    """
    if cpus <= 0:
        raise ValueError("the Ray cluster has no CPU")
    if threads < 1:
        raise ValueError("threads per actor must be at least 1")
    if actors is not None and actors < 1:
        raise ValueError("actors must be at least 1")
    if gpus_per_actor < 0:
        raise ValueError("GPUs per actor cannot be negative")
    if gpus_per_actor:
        if gpus < gpus_per_actor:
            raise ValueError(f"each actor asks for {gpus_per_actor:g} GPU but the Ray cluster has {gpus:g}")
        count = actors or max(1, math.floor(gpus / gpus_per_actor + 1e-9))
    else:
        count = actors or max(1, math.floor(cpus / threads))
    share = (cpus - spare_cpus(cpus)) / count
    num_cpus = max(MIN_ACTOR_CPUS, min(float(threads), math.floor(share * 100) / 100))
    return ActorPlan(actors=count, num_cpus=num_cpus, num_gpus=float(gpus_per_actor), threads=threads)
