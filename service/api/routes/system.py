"""Liveness, readiness, model cards and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from onnxruntime import InferenceSession
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import metrics
from service.api.deps import SettingsDep, StateDep
from service.api.schemas import CpuSizing, GraphInfo, Health, ModelInfo, ModelsResponse
from service.card import GraphSpec

router = APIRouter(tags=["operations"])
models_router = APIRouter(tags=["models"])
metrics_router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: every model loaded and warmed up",
    responses={
        503: {
            "model": Health,
            "description": "Loading (status 'loading'), loading failed ('failed'), or shutting "
            "down after SIGTERM ('draining'; requests are still served until the listener closes); see Retry-After",
        }
    },
)
async def readyz(state: StateDep, settings: SettingsDep) -> Response | Health:
    if state.ready:
        return Health(status="ready")
    status = "draining" if state.draining else "failed" if state.load_error else "loading"
    return JSONResponse(
        {"status": status, "detail": state.public_status},
        status_code=503,
        headers={"Retry-After": str(settings.retry_after_s)},
    )


@models_router.get("/v1/models", response_model=ModelsResponse, summary="Loaded model cards and execution providers")
async def models(state: StateDep) -> ModelsResponse:
    out = []
    pipeline = state.pipeline if state.loaded else None
    sessions = {}
    if pipeline is not None:
        sessions[pipeline.model.card.name] = pipeline.model.sessions
    if pipeline is not None and state.cascade is not None:
        d = state.cascade
        sessions[state.detector_card.name if state.detector_card else "detector"] = {
            "pnet": d.pnet,
            "rnet": d.rnet,
            "onet": d.onet,
        }
    for card in (state.emotion_card, state.detector_card):
        if card is None:
            continue
        model_sessions = sessions.get(card.name, {})
        out.append(
            ModelInfo(
                name=card.name,
                version=card.version,
                kind=card.kind,
                labels=card.labels,
                card=card.to_dict(),
                graphs={
                    g: _graph_info(spec, model_sessions.get(g), state.providers[0]) for g, spec in card.graphs.items()
                },
            )
        )
    cpu = CpuSizing(
        usable_cores=state.cpu.cores,
        affinity_cores=state.cpu.affinity_cores,
        quota_cores=state.cpu.quota_cores,
        detect_threads=state.detect_threads,
        intra_op_threads=state.intra_op_threads,
        computing_slots=state.computing_slots,
    )
    return ModelsResponse(ready=state.ready, requested_providers=state.providers, cpu=cpu, models=out)


def _graph_info(spec: GraphSpec, session: InferenceSession | None, requested: str) -> GraphInfo:
    providers = session.get_providers() if session is not None else []
    return GraphInfo(
        file=spec.file,
        sha256=spec.sha256,
        precision=spec.precision,
        providers=providers,
        fallback=bool(providers) and providers[0] != requested,
    )


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
def prometheus_metrics() -> Response:
    return Response(generate_latest(metrics.scrape_registry()), media_type=CONTENT_TYPE_LATEST)
