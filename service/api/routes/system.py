"""Liveness, readiness, model cards and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import metrics
from service.api.deps import StateDep
from service.api.schemas import GraphInfo, Health, ModelInfo, ModelsResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="Readiness: every model loaded and warmed up", responses={503: {"model": Health}})
async def readyz(state: StateDep) -> Response | Health:
    if state.ready:
        return Health(status="ready")
    detail = state.load_error or "loading and warming up models"
    status = "failed" if state.load_error else "loading"
    return JSONResponse({"status": status, "detail": detail}, status_code=503, headers={"Retry-After": "5"})


@router.get("/v1/models", response_model=ModelsResponse, tags=["models"], summary="Loaded model cards and execution providers")
async def models(state: StateDep) -> ModelsResponse:
    out = []
    pipeline = state.pipeline if state.ready else None
    sessions = {}
    if pipeline is not None:
        sessions[pipeline.model.card.name] = pipeline.model.sessions
        d = pipeline.detector
        sessions[state.detector_card.name if state.detector_card else "detector"] = {"pnet": d.pnet, "rnet": d.rnet, "onet": d.onet}
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
                    g: GraphInfo(file=spec.file, sha256=spec.sha256, providers=model_sessions[g].get_providers() if g in model_sessions else [])
                    for g, spec in card.graphs.items()
                },
            )
        )
    return ModelsResponse(ready=state.ready, models=out)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
