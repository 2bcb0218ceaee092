"""The FastAPI application: ``/api/v1`` (see :mod:`absync.web.routes`), health, readiness, metrics.

Edges: request bodies are capped before anything reads them (:mod:`absync.web.limits`), a URL
with a control character is refused before any route sees it (:mod:`absync.web.inputs`),
``/metrics`` needs the metrics token or an all-tenant API token, and ``/docs`` is served from
local files (:mod:`absync.web.docs`; no ReDoc, no CDN).

``create_app`` wires what the routes share (:class:`absync.web.state.AppState`): the projection
database (migrated here), one idempotent Kafka producer for commands, the destinations table read
from Kafka (started with the app, caught up before the first request), the destination-write
service and the secret box. Tests pass their own engine and producer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import sqlalchemy as sa
import structlog
from confluent_kafka import KafkaException, Producer
from fastapi import Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from absync.services.destinations import DestinationService
from absync.web.auth import metrics_access
from absync.web.console import router as console_router
from absync.web.docs import router as docs_router
from absync.web.export import ExportSlots
from absync.web.inputs import NoControlCharacters
from absync.web.limits import BodyLimit
from absync.web.metrics import make_registry
from absync.web.routes import router
from absync.web.state import AppState
from projections.db import engine_for, migrate
from streams.destinations import DestinationTable
from streams.kafka import make_producer
from streams.secrets import SecretBox
from streams.settings import Settings
from streams.topics import Topics

log = structlog.get_logger(__name__)

READY_TIMEOUT = 3.0


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    kafka: str
    destinations: str


def create_app(
    settings: Settings, *, engine: Engine | None = None, producer: Producer | None = None
) -> FastAPI:
    engine = engine or engine_for(settings)
    migrate(engine)
    destinations = DestinationTable(settings)
    state = AppState(
        settings=settings,
        engine=engine,
        producer=producer or make_producer(settings),
        destinations=destinations,
        destination_writes=DestinationService(settings, destinations, engine),
        box=SecretBox.from_settings(settings),
        metrics=make_registry(settings, engine),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.destinations.start()
        await asyncio.to_thread(state.destinations.wait_ready)
        try:
            yield
        finally:
            state.stopping.set()
            await asyncio.to_thread(state.stop_jobs)
            await asyncio.to_thread(state.destinations.close)
            await asyncio.to_thread(state.producer.flush, 10)

    app = FastAPI(
        title="absync operator API",
        version="1",
        description="Deliveries of absence changes to destinations: see, retry, configure.",
        lifespan=lifespan,
        docs_url=None,  # served by absync.web.docs from local files
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.absync = state
    app.state.engine = engine  # read by absync.web.auth
    # CSV exports streaming now (absync.web.export)
    app.state.exports = ExportSlots(settings.exports_per_token, settings.exports)
    app.include_router(router)
    app.include_router(console_router)
    app.include_router(docs_router)
    app.add_middleware(NoControlCharacters)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    _add_operational_routes(app, state)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    return app


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 without the ``input`` (and ``ctx``) of each error: the input of a refused
    destination write is the whole body, secrets included, and an answer never contains a secret.
    Each error keeps ``type``, ``loc`` and ``msg`` (without pydantic's "Value error, " prefix)."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"type": e["type"], "loc": e["loc"], "msg": str(e["msg"]).removeprefix("Value error, ")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's handler, except that a 405 lists in ``Allow`` every method of the path (Starlette
    names only those of the first route matching the path)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    methods = {
        method
        for route in request.app.router.routes
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE
        for method in route.methods or ()
    }
    return JSONResponse(
        {"detail": exc.detail}, status_code=405, headers={"Allow": ", ".join(sorted(methods))}
    )


def _add_operational_routes(app: FastAPI, state: AppState) -> None:
    """Probes (liveness, readiness: no token) and the Prometheus scrape (metrics token)."""

    @app.get("/healthz", response_model=Health, tags=["operations"], summary="Liveness")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["operations"],
        summary="Readiness: database and Kafka reachable",
        responses={503: {"model": Readiness, "description": "Not ready."}},
    )
    def readyz() -> JSONResponse:
        checks = {"database": _check_database(state.engine), "kafka": _check_kafka(state)}
        checks["destinations"] = _check_destinations(state.destinations)
        ready = all(v == "ok" for v in checks.values())
        body = Readiness(status="ready" if ready else "not ready", **checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics (ABSYNC_METRICS_TOKEN or an API token for all tenants)",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
            401: {"description": "No metrics token."},
        },
        dependencies=[Depends(metrics_access)],
    )
    def metrics() -> Response:
        return Response(generate_latest(state.metrics), media_type=CONTENT_TYPE_LATEST)


def _check_database(engine: Engine) -> str:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("database not reachable", error=str(exc))
        return "unreachable"
    return "ok"


def _check_kafka(state: AppState) -> str:
    topic = Topics(state.settings).commands
    try:
        metadata = state.producer.list_topics(topic, timeout=READY_TIMEOUT)
    except KafkaException as exc:
        log.warning("kafka not reachable", error=str(exc))
        return "unreachable"
    found = metadata.topics.get(topic)
    return "ok" if found is not None and found.error is None else f"topic {topic} missing"


def _check_destinations(table: DestinationTable) -> str:
    try:
        table.wait_ready(0)
    except TimeoutError:
        return "catching up"
    return "ok"
