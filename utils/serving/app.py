"""The HTTP server around an `ExitEngine` (FastAPI, run by uvicorn).

- `POST /predict`: multipart form with one or more files in the field `images`; answers
  `{"predictions": [{"label", "label_id", "probability", "exit_layer", "seconds"}, ...]}` in the order sent
  (`?probabilities=true` adds every class's probability). Bad input is refused before it reaches the engine:
  400 (unknown field or query parameter, no image, too many images), 411 (no Content-Length), 413 (a file or the
  body too large), 415 (not multipart, or a file that is not an image). A full engine answers 503 with Retry-After.
- `GET /health`: 200 with the engine's load while it serves, 503 once it is shutting down.
- `GET /metrics`: Prometheus text (`utils.serving.metrics`).
On shutdown (uvicorn stops on SIGINT/SIGTERM after the open requests are answered) the engine drains: every image
it admitted is answered before the process ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import torch
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .engine import EngineFull, EngineStopped, ExitEngine, Prediction
from .metrics import ServingMetrics
from .preprocess import ImagePreprocessor, NotAnImage

IMAGE_FIELD = "images"
QUERY_FIELDS = ("probabilities",)
# Room for the multipart boundaries and headers of each part on top of the files themselves.
PART_OVERHEAD = 4096


@dataclass(frozen=True)
class RequestLimits:
    """The largest request the server reads: images per request and bytes per image file."""

    max_images: int = 16
    max_image_bytes: int = 10 * 2**20

    @property
    def max_body_bytes(self) -> int:
        return self.max_images * (self.max_image_bytes + PART_OVERHEAD)


class Refusal(HTTPException):
    """An HTTP error answer, with the outcome it counts as in `serving_requests_total`."""

    def __init__(self, status_code: int, detail: str, outcome: str = "bad_request",
                 headers: dict[str, str] | None = None):
        super().__init__(status_code, detail, headers)
        self.outcome = outcome


def create_app(engine: ExitEngine, preprocessor: ImagePreprocessor, id2label: dict[int, str],
               metrics: ServingMetrics, limits: RequestLimits = RequestLimits()) -> FastAPI:
    """The server's application; it starts `engine` at startup and drains it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not engine.worker.is_alive():
            engine.start()
        yield
        await run_in_threadpool(engine.stop)

    app = FastAPI(title="Early-exit image classifier", lifespan=lifespan)
    app.state.engine = engine

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        start = time.perf_counter()
        try:
            images = await read_images(request, preprocessor, limits)
            predictions = await classify(engine, images)
        except Refusal as refusal:
            metrics.requests.labels(refusal.outcome).inc()
            raise
        except Exception:
            metrics.requests.labels("error").inc()
            raise
        metrics.requests.labels("ok").inc()
        metrics.request_seconds.observe(time.perf_counter() - start)
        full = request.query_params.get("probabilities", "false").lower() in ("1", "true", "yes")
        return {"predictions": [answer(prediction, id2label, full) for prediction in predictions]}

    @app.get("/health")
    async def health() -> JSONResponse:
        if engine.stopping:
            return JSONResponse({"status": "stopping"}, status_code=503)
        return JSONResponse({"status": "ok", "in_flight": engine.in_flight, "max_queue": engine.max_queue,
                             "queue_depths": engine.queue_depths()})

    @app.get("/metrics")
    async def scrape() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def read_images(request: Request, preprocessor: ImagePreprocessor, limits: RequestLimits) -> torch.Tensor:
    """The request's images as model inputs (n, C, H, W); a `Refusal` naming the problem otherwise."""
    unknown = sorted(set(request.query_params) - set(QUERY_FIELDS))
    if unknown:
        raise Refusal(400, f"Unknown query parameter(s) {unknown}; allowed: {list(QUERY_FIELDS)}.")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise Refusal(415, f"Send the images as multipart/form-data files in the field '{IMAGE_FIELD}' "
                           f"(e.g. curl -F {IMAGE_FIELD}=@photo.jpg).")
    length = request.headers.get("content-length")
    if length is None:
        raise Refusal(411, "A Content-Length header is required.")
    if int(length) > limits.max_body_bytes:
        raise Refusal(413, f"The request has {int(length)} bytes; at most {limits.max_images} images of "
                           f"{limits.max_image_bytes} bytes each are read.")
    form = await request.form()  # the Content-Length check above bounds what it reads
    try:
        unknown = sorted({name for name in form.keys() if name != IMAGE_FIELD})
        if unknown:
            raise Refusal(400, f"Unknown form field(s) {unknown}; send the images as files in the field "
                               f"'{IMAGE_FIELD}'.")
        files = form.getlist(IMAGE_FIELD)
        if not files or not all(isinstance(file, UploadFile) for file in files):
            raise Refusal(400, f"No image file: send one or more files in the field '{IMAGE_FIELD}'.")
        if len(files) > limits.max_images:
            raise Refusal(413, f"{len(files)} images in one request; at most {limits.max_images} are read.")
        tensors = []
        for file in files:
            if file.size is not None and file.size > limits.max_image_bytes:
                raise Refusal(413, f"'{file.filename}' has {file.size} bytes; images of at most "
                                   f"{limits.max_image_bytes} bytes are read.")
            data = await file.read()
            try:
                tensors.append(await run_in_threadpool(preprocessor, data))
            except NotAnImage as error:
                raise Refusal(415, f"'{file.filename}' is {error}.") from None
        return torch.stack(tensors)
    finally:
        await form.close()


async def classify(engine: ExitEngine, images: torch.Tensor) -> list[Prediction]:
    """Submit the images and wait for every answer; 503 when the engine is full or stopping."""
    try:
        futures = engine.submit(images)
    except EngineFull as full:
        raise Refusal(503, f"{full} Retry later.", "overloaded",
                      {"Retry-After": str(int(full.retry_after))}) from None
    except EngineStopped as stopped:
        raise Refusal(503, str(stopped), "unavailable") from None
    return list(await asyncio.gather(*(asyncio.wrap_future(future) for future in futures)))


def answer(prediction: Prediction, id2label: dict[int, str], probabilities: bool) -> dict:
    """One image's JSON answer."""
    row = {"label": id2label.get(prediction.label, str(prediction.label)), "label_id": prediction.label,
           "probability": float(prediction.probabilities[prediction.label]), "exit_layer": prediction.exit_layer,
           "seconds": prediction.seconds}
    if probabilities:
        row["probabilities"] = prediction.probabilities.tolist()
    return row
