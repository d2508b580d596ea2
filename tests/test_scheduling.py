"""The scheduler (service/scheduling.py), driven from outside: the detector's threads find
exactly what one thread finds, a detection beside another takes one thread whole, errors reach
the caller, and the service's state builds its models through it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from service.scheduling import DetectorThreads, Scheduler
from service.vision.mtcnn import DEFAULT_MIN_FACE_SIZE, MTCNN, CascadeTuning, FaceDetection, level_size, pnet_bands

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "mtcnn"


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN.from_dir(MODEL_DIR, intra_op_threads=1)


def assert_same_detections(found: list[FaceDetection], want: list[FaceDetection]) -> None:
    """The very same detections, to the last bit: boxes, scores and landmarks."""
    assert [f.box for f in found] == [f.box for f in want]
    assert [f.score for f in found] == [f.score for f in want]
    for a, b in zip(found, want, strict=True):
        np.testing.assert_array_equal(a.landmarks, b.landmarks)


class Recording:
    """A session that records the thread of every call and can hold its first call until told."""

    def __init__(self, session: Any, log: list[str], hold: threading.Event | None = None) -> None:
        self.session, self.log, self.hold = session, log, hold
        self.holding = threading.Event()

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.log.append(threading.current_thread().name)
        if self.hold is not None and not self.holding.is_set():
            self.holding.set()
            assert self.hold.wait(30)
        return self.session.run(names, feed)


class Spy(MTCNN):
    """The cascade, recording the width of the workers and the thread of each detection."""

    def __init__(self, *sessions: Any) -> None:
        super().__init__(*sessions)
        self.calls: list[tuple[int, str]] = []

    def detect(self, image: np.ndarray, **kwargs: Any) -> list[FaceDetection]:
        self.calls.append((kwargs["workers"].width, threading.current_thread().name))
        return super().detect(image, **kwargs)


def test_threads_find_exactly_what_one_thread_finds(detector: MTCNN, crowd: np.ndarray) -> None:
    calls: list[str] = []
    recorded = MTCNN(detector.pnet, Recording(detector.rnet, calls), detector.onet)
    alone = recorded.detect(crowd)
    assert len(alone) >= 3 and len(calls) > 1  # several R-Net calls: the threads have calls to share
    assert len(pnet_bands(*level_size(900, 1200, 12 / DEFAULT_MIN_FACE_SIZE), CascadeTuning().pnet_band_pixels)) > 1
    threads = DetectorThreads(3)
    try:
        for _ in range(2):  # the same calls, in another order: the very same numbers
            assert_same_detections(threads.detect(detector, crowd), alone)
    finally:
        threads.close()


def test_a_detection_beside_another_takes_one_thread_whole(detector: MTCNN, crowd: np.ndarray) -> None:
    """While another detection is in flight, a detection runs its whole cascade in one of the
    detector's threads, sharing nothing out (both photos already keep the cores busy), and
    finds exactly the same; alone, it shares its work over all the threads. Either way every
    network call runs in the detector's threads."""
    alone = detector.detect(crowd)
    callers: list[str] = []
    hold = threading.Event()
    held_pnet = Recording(detector.pnet, callers, hold)
    first = Spy(held_pnet, Recording(detector.rnet, callers), Recording(detector.onet, callers))
    second = Spy(
        Recording(detector.pnet, callers), Recording(detector.rnet, callers), Recording(detector.onet, callers)
    )
    threads = DetectorThreads(2)
    found: dict[str, list[FaceDetection]] = {}
    try:
        other = threading.Thread(target=lambda: found.setdefault("first", threads.detect(first, crowd)))
        other.start()
        try:
            assert held_pnet.holding.wait(30)  # the first detection is in flight, inside P-Net
            assert threads.in_flight == 1
            found["second"] = threads.detect(second, crowd)
        finally:
            hold.set()
            other.join(30)
        assert first.calls == [(2, other.name)]  # alone: shared over both threads, from its caller
        ((width, thread),) = second.calls
        assert width == 1 and thread.startswith("mtcnn")  # one thread, whole
        assert callers and all(name.startswith("mtcnn") for name in callers)
        for name in ("first", "second"):
            assert_same_detections(found[name], alone)
        assert threads.in_flight == 0
    finally:
        hold.set()
        threads.close()


def test_an_error_in_a_detector_thread_reaches_the_caller(detector: MTCNN, crowd: np.ndarray) -> None:
    class Broken:
        def get_inputs(self) -> Any:
            return detector.rnet.get_inputs()

        def run(self, names: Any, feed: Any) -> list[np.ndarray]:
            raise RuntimeError("R-Net failed")

    broken = MTCNN(detector.pnet, Broken(), detector.onet)
    threads = DetectorThreads(2)
    try:
        with pytest.raises(RuntimeError, match="R-Net failed"):
            threads.detect(broken, crowd)
        assert threads.in_flight == 0
    finally:
        threads.close()


def test_closed_threads_work_in_the_calling_thread(detector: MTCNN, astronaut_rgb: np.ndarray) -> None:
    threads = DetectorThreads(2)
    threads.close()
    threads.close()  # idempotent
    assert [f.box for f in threads.detect(detector, astronaut_rgb)] == [f.box for f in detector.detect(astronaut_rgb)]
    with pytest.raises(ValueError, match="threads"):
        DetectorThreads(0)


def test_one_thread_runs_everything_in_the_callers_thread(detector: MTCNN, astronaut_rgb: np.ndarray) -> None:
    spy = Spy(detector.pnet, detector.rnet, detector.onet)
    threads = DetectorThreads(1)
    threads.detect(spy, astronaut_rgb)
    assert spy.calls == [(1, threading.current_thread().name)]


def test_batching_is_the_schedulers_and_closes_with_it() -> None:
    doubled: list[int] = []

    def graph(x: np.ndarray) -> np.ndarray:
        doubled.append(len(x))
        return 2 * x

    plain = Scheduler(slots=1, max_queue=1, detect_threads=1, max_batch=4, batch_wait_s=None)
    run = plain.batched(graph, "recognition")
    np.testing.assert_array_equal(run(np.arange(10.0)), 2 * np.arange(10.0))
    assert doubled == [4, 4, 2]  # chunks of max_batch, no batching thread

    batching = Scheduler(slots=1, max_queue=1, detect_threads=2, max_batch=4, batch_wait_s=0.0)
    batched = batching.batched(graph, "recognition")
    np.testing.assert_array_equal(batched(np.arange(3.0)), 2 * np.arange(3.0))
    batching.close()
    with pytest.raises(RuntimeError, match="closed"):
        batched(np.arange(3.0))


def test_the_cascade_owns_no_threads_locks_or_mutable_settings() -> None:
    """Scheduling lives in service/scheduling.py alone: the detector module imports nothing that
    makes threads or locks, and its module-level names are constants."""
    import ast

    import service.vision.mtcnn as cascade

    tree = ast.parse(Path(cascade.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"threading", "concurrent.futures", "multiprocessing", "asyncio"}
    # The tuning is given at construction, never read from a module knob a tool could rebind.
    module_names = {name.lower() for name in vars(cascade)}
    assert not module_names & set(CascadeTuning.__dataclass_fields__)
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            name = (node.targets[0] if isinstance(node, ast.Assign) else node.target).id
            if name == "__all__":
                continue
            value = getattr(cascade, name)
            assert isinstance(value, (int, float, str, tuple, frozenset, CascadeTuning, type(cascade.INLINE), TypeVar))
