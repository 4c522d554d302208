"""The HTTP server around the engine: predictions equal the model's, clear 4xx for bad input, 503 with Retry-After
when full, Prometheus metrics that parse, and a command that starts on a saved model and drains on SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import MEAN, STD, GatedPipeline, expected, image_files, png, save_served_model, start_server

from models.early_exit_model import EarlyExitMixin
from utils.export import export_onnx
from utils.serving.app import RequestLimits, create_app
from utils.serving.engine import ExitEngine
from utils.serving.metrics import ServingMetrics
from utils.serving.pipelines import segment_pipeline
from utils.serving.preprocess import ImagePreprocessor
from utils.serving.server import EngineOptions, build_app


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp("served")
    return directory, save_served_model(directory)


@pytest.fixture(scope="module")
def client(saved_model) -> TestClient:
    with TestClient(build_app(str(saved_model[0]))) as test_client:
        yield test_client


def test_predict_answers_one_image_or_several_as_the_model(client, saved_model):
    seeds = list(range(12))
    labels, layers = expected(saved_model[1], seeds)
    assert len(set(layers)) >= 3, "the uploads should spread over several exits"
    one = client.post("/predict", files=image_files(seeds[:1]))
    assert one.status_code == 200
    several = client.post("/predict?probabilities=true", files=image_files(seeds[1:]))
    assert several.status_code == 200
    predictions = one.json()["predictions"] + several.json()["predictions"]
    assert [p["label_id"] for p in predictions] == labels
    assert [p["exit_layer"] for p in predictions] == layers
    assert [p["label"] for p in predictions] == [f"LABEL_{label}" for label in labels]
    assert all(len(p["probabilities"]) == 5 for p in several.json()["predictions"])
    assert all(0 < p["probability"] <= 1 and p["seconds"] > 0 for p in predictions)


@pytest.mark.parametrize("request_kwargs,status,message", [
    (dict(files=[("images", ("notes.txt", b"not an image", "text/plain"))]), 415, "'notes.txt' is not a readable"),
    (dict(files=[("photo", ("a.png", png(0), "image/png"))]), 400, "Unknown form field(s) ['photo']"),
    (dict(files=image_files([0]), data={"threshold": "0.5"}), 400, "Unknown form field(s) ['threshold']"),
    (dict(data={"images": "a.png"}), 415, "multipart/form-data"),
    (dict(json={"images": []}), 415, "multipart/form-data"),
    (dict(files=[("images", ("big.png", png(0, (300, 300)), "image/png"))]), 413, "images of at most 200000 bytes"),
    (dict(files=image_files(range(5))), 413, "at most 4 are read"),
    (dict(files=[("images", ("empty.png", b"", "image/png"))]), 415, "'empty.png' is not a readable image"),
])
def test_bad_input_gets_a_clear_4xx(saved_model, request_kwargs, status, message):
    app = build_app(str(saved_model[0]), limits=RequestLimits(max_images=4, max_image_bytes=200_000))
    with TestClient(app) as test_client:
        response = test_client.post("/predict", **request_kwargs)
        assert response.status_code == status, response.text
        assert message in response.json()["detail"]
        bad = next(f for f in text_string_to_metric_families(test_client.get("/metrics").text)
                   if f.name == "serving_requests")
        assert {s.labels["outcome"]: s.value for s in bad.samples if s.name.endswith("_total")}["bad_request"] == 1


def test_unknown_query_parameter_is_refused(client):
    response = client.post("/predict?treshold=0.5", files=image_files([0]))
    assert response.status_code == 400 and "['treshold']" in response.json()["detail"]


def test_a_full_engine_answers_503_with_retry_after_and_serves_again_after(saved_model):
    model = saved_model[1]
    gated = GatedPipeline(segment_pipeline(model), gated=(0,))
    metrics = ServingMetrics([*model.config.exit_positions(), 6], gated.num_stages, 8)
    engine = ExitEngine(gated, max_batch=8, max_queue=2, observer=metrics)
    metrics.watch_queues(engine.queue_depths)
    app = create_app(engine, ImagePreprocessor(16, MEAN, STD), {}, metrics)
    with TestClient(app) as test_client:
        held = []
        first = threading.Thread(target=lambda: held.append(test_client.post("/predict", files=image_files([0, 1]))))
        first.start()
        assert gated.entered.wait(10)
        refused = test_client.post("/predict", files=image_files([2]))
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert "holds 2 of 2 images" in refused.json()["detail"]
        gated.release.set()
        first.join(10)
        assert held[0].status_code == 200 and len(held[0].json()["predictions"]) == 2
        assert test_client.post("/predict", files=image_files([2])).status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(test_client.get("/metrics").text)}
    outcomes = {s.labels["outcome"]: s.value for s in families["serving_requests"].samples if s.name.endswith("_total")}
    assert (outcomes["ok"], outcomes["overloaded"]) == (2, 1)


def test_metrics_are_scraped_and_parsed(saved_model):
    seeds = list(range(12))
    _, layers = expected(saved_model[1], seeds)
    with TestClient(build_app(str(saved_model[0]))) as test_client:
        for start in range(0, 12, 3):
            assert test_client.post("/predict", files=image_files(seeds[start:start + 3])).status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(test_client.get("/metrics").text)}
    samples = {family: [(s.name, s.labels, s.value) for s in families[family].samples] for family in families}
    assert ("serving_requests_total", {"outcome": "ok"}, 4.0) in samples["serving_requests"]
    assert ("serving_request_seconds_count", {}, 4.0) in samples["serving_request_seconds"]
    assert ("serving_image_seconds_count", {}, 12.0) in samples["serving_image_seconds"]
    exit_buckets = {float(labels["le"]): value for name, labels, value in samples["serving_exit_layer"]
                    if name.endswith("_bucket")}
    for layer in range(1, 7):
        assert exit_buckets[float(layer)] == sum(exit_layer <= layer for exit_layer in layers)
    # every stage reports its queue (empty now) and its batches; stage 0 ran the 12 images
    assert {labels["stage"]: value for _, labels, value in samples["serving_queue_depth"]} == {
        str(stage): 0.0 for stage in range(7)}
    batch_rows = {labels["stage"]: value for name, labels, value in samples["serving_batch_size"]
                  if name == "serving_batch_size_sum"}
    # stage s runs the images leaving after layer s; the last exit (layer 6) lets none leave, so the final stage
    # runs the same images as stage 5
    assert batch_rows == {str(stage): sum(layer > min(stage, 5) for layer in layers) for stage in range(7)}


def test_the_server_runs_the_model_in_bfloat16_and_refuses_an_unknown_dtype(saved_model):
    with TestClient(build_app(str(saved_model[0]), EngineOptions(dtype="bfloat16"))) as test_client:
        response = test_client.post("/predict?probabilities=true", files=image_files(range(6)))
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert all(p["exit_layer"] in (1, 2, 3, 4, 5, 6) for p in predictions)
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-3 for p in predictions)
    with pytest.raises(ValueError, match="dtype='int8': choose one of float32, bfloat16, float16"):
        build_app(str(saved_model[0]), EngineOptions(dtype="int8"))


def test_the_server_compiles_the_segments_and_answers_as_eager(saved_model, monkeypatch):
    """`--compile` on the served model; the `aot_eager` backend traces every segment through dynamo as inductor does,
    without generating C++ (tests/test_compile_and_precision.py runs inductor itself)."""
    compiled = []
    original = EarlyExitMixin.compile_exits

    def compile_exits(model, **options):
        compiled.append(options)
        original(model, backend="aot_eager", **options)

    monkeypatch.setattr(EarlyExitMixin, "compile_exits", compile_exits)
    seeds = list(range(12))
    with TestClient(build_app(str(saved_model[0]), EngineOptions(compile=True))) as test_client:
        responses = [test_client.post("/predict", files=image_files(seeds[:5])),
                     test_client.post("/predict", files=image_files(seeds[5:]))]
    assert compiled == [{}]
    answers = [answer for response in responses for answer in response.json()["predictions"]]
    labels, layers = expected(saved_model[1], seeds)
    assert [(a["label_id"], a["exit_layer"]) for a in answers] == list(zip(labels, layers))


def test_the_server_runs_an_onnx_export_with_the_models_answers(saved_model, tmp_path):
    directory, model = saved_model
    export_onnx(model, tmp_path / "export", exporter="torchscript", image_mean=MEAN, image_std=STD)
    seeds = list(range(12))
    with TestClient(build_app(str(tmp_path / "export"))) as test_client:
        response = test_client.post("/predict", files=image_files(seeds))
    assert response.status_code == 200
    answers = response.json()["predictions"]
    labels, layers = expected(model, seeds)
    assert [(a["label_id"], a["exit_layer"]) for a in answers] == list(zip(labels, layers))
    with pytest.raises(ValueError, match="serve it without --dtype and --compile"):
        build_app(str(tmp_path / "export"), EngineOptions(dtype="float16"))
    export_onnx(model, tmp_path / "bare", exporter="torchscript")
    with pytest.raises(ValueError, match="has no image normalisation; export again"):
        build_app(str(tmp_path / "bare"))


def test_health_reports_the_engine_load(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "in_flight": 0, "max_queue": 256, "queue_depths": [0] * 7}


def test_the_command_serves_a_saved_model_and_answers_open_requests_on_sigterm(saved_model):
    server, url = start_server(["--model_dir", str(saved_model[0]), "--max_batch", "64", "--max_wait_ms", "60000"],
                               timeout=60)
    try:
        responses = {}

        def send(seed: int) -> None:
            responses[seed] = httpx.post(f"{url}/predict", files=image_files([seed]), timeout=60)

        senders = [threading.Thread(target=send, args=(seed,)) for seed in range(3)]
        for sender in senders:
            sender.start()
        # the three images wait for a fuller batch (max_wait 60 s) until the server is told to stop
        while httpx.get(f"{url}/health", timeout=5).json()["in_flight"] < 3:
            time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        for sender in senders:
            sender.join(60)
        # uvicorn re-raises the signal it caught once its graceful shutdown is over
        assert server.wait(60) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
    labels, layers = expected(saved_model[1], range(3))
    assert all(responses[seed].status_code == 200 for seed in range(3))
    answers = [responses[seed].json()["predictions"][0] for seed in range(3)]
    assert [(a["label_id"], a["exit_layer"]) for a in answers] == list(zip(labels, layers))
    assert all(a["seconds"] < 60 for a in answers)  # run at the signal, not after the 60 s wait
