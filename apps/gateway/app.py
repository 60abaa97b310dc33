"""The gateway's ASGI app (FastAPI): routes, OpenAI-shaped errors, metrics, and the browser page."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.staticfiles import StaticFiles

from apps.gateway import chat, realtime_endpoint
from apps.gateway.auth import ClientPool
from apps.gateway.errors import GatewayError
from apps.gateway.metrics import GatewayMetrics
from apps.gateway.settings import GatewaySettings
from apps.gateway.state import GatewayState

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# Routes counted by name; anything else (the page's files, unknown paths) counts as "other".
COUNTED_ROUTES = ("/v1/chat/completions", "/v1/models", "/healthz", "/metrics")

_metrics: GatewayMetrics | None = None


def shared_metrics() -> GatewayMetrics:
    """Prometheus metrics are process-wide: declared once, whatever number of apps a process builds."""
    global _metrics
    if _metrics is None:
        _metrics = GatewayMetrics.declare()
    return _metrics


def create_app(settings: GatewaySettings, pool: ClientPool | None = None) -> FastAPI:
    pool = pool or ClientPool(settings.orchestrator, settings.max_clients)
    state = GatewayState(settings, pool, shared_metrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await pool.close()

    app = FastAPI(title="vita-serve gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = state

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.url.path if request.url.path in COUNTED_ROUTES else "other"
        state.metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, error: GatewayError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else "method_not_allowed" if error.status_code == 405 else None
        return JSONResponse(GatewayError(str(error.detail), status=error.status_code, code=code).body(),
                            status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(GatewayError("the request is malformed").body(), status_code=400)

    @app.get("/healthz")
    async def healthz() -> dict:
        """Liveness of the gateway process (the orchestrator's health is its own probe's business)."""
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model(settings)]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict:
        if model_id != settings.model_name:
            raise GatewayError(f"the model {model_id[:80]!r} does not exist; this server serves "
                               f"{settings.model_name!r}", status=404, code="model_not_found", param="model")
        return _model(settings)

    app.add_api_route("/v1/chat/completions", chat.chat_completions, methods=["POST"])
    app.add_api_websocket_route("/v1/realtime", realtime_endpoint.realtime)
    if STATIC_DIR.is_dir():
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="page")
    return app


def _model(settings: GatewaySettings) -> dict:
    return {"id": settings.model_name, "object": "model", "created": _STARTED, "owned_by": "vita-serve"}


_STARTED = int(time.time())
