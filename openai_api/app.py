"""The ASGI application: the routes, the errors, the guards and the Triton connection.

`create_app` wires the pieces the other modules hold; the Triton client is made when the app
starts (the gRPC channel belongs to the server's event loop) and closed when it stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp

from openai_api import chat, errors, models, speech, transcription
from openai_api.guards import ApiKeys, BodyLimit
from openai_api.metrics import Metrics, MetricsMiddleware
from openai_api.settings import Settings
from openai_api.triton import Triton


def create_app(settings: Settings) -> ASGIApp:
    """The door for `settings`: FastAPI inside, the guards and metrics around it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.triton = Triton(settings.triton_url, settings.timeout_seconds)
        try:
            yield
        finally:
            await app.state.triton.close()

    app = FastAPI(
        title="OpenAI-compatible door to the Triton multimodal models",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    metrics = Metrics()
    errors.install(app)
    app.include_router(chat.router)
    app.include_router(transcription.router)
    app.include_router(speech.router)

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        ready = await request.app.state.triton.ready_models(settings.models)
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "triton"}
            for name in models.listed(settings.models, ready)
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/v1/models/{model}")
    async def get_model(model: str, request: Request) -> JSONResponse:
        ready = await request.app.state.triton.ready_models(settings.models)
        if model not in models.listed(settings.models, ready):
            raise errors.ApiError(
                404, f"The model '{model}' does not exist", "model", "model_not_found"
            )
        return JSONResponse({"id": model, "object": "model", "created": 0, "owned_by": "triton"})

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """200 only when Triton is ready and so is every model this door serves."""
        ready = await request.app.state.triton.ready_models(settings.models)
        missing = [name for name in settings.models if name not in ready]
        if missing:
            return JSONResponse({"status": "not ready", "missing": missing}, status_code=503)
        return JSONResponse({"status": "ready", "models": list(settings.models)})

    app.add_route("/metrics", metrics.endpoint, methods=["GET"])
    guarded = BodyLimit(app, settings.max_json_bytes, settings.max_upload_bytes)
    return MetricsMiddleware(ApiKeys(guarded, settings.api_keys), metrics)
