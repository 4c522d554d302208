"""The server as Ray Serve replicas on a local Ray instance: replicas added when the requests each one holds pass
the target, and answers equal to one server's (the model's batched early exit) whichever replica gives them."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve
from serving_helpers import expected, free_port, image_files, save_served_model, start_server

from utils.serving import cli
from utils.serving.replicas import REPLICA_HEADER, ReplicaOptions, replica_app, start_serve
from utils.serving.server import EngineOptions

pytestmark = pytest.mark.launches


# the load each replica holds reaches Serve's controller every second instead of every 10 s
PUSH_INTERVALS = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
                  "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"}


@pytest.fixture(scope="module")
def local_serve() -> str:
    """A local Ray instance (2 CPUs) with Serve's HTTP proxy on a free port of 127.0.0.1; yields its URL."""
    port = free_port()
    patch = pytest.MonkeyPatch()
    for name, value in PUSH_INTERVALS.items():
        patch.setenv(name, value)
    start_serve("127.0.0.1", port, num_cpus=2)
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()
    patch.undo()


def test_the_command_serves_replicas_and_stops_them_on_sigterm(tmp_path: Path):
    """`python -m utils.serving --replicas 1` on a Ray instance of its own: it answers as the model does, names the
    replica, and SIGTERM shuts Serve and Ray down with exit code 0. (Runs before the module's Ray instance starts.)"""
    model = save_served_model(tmp_path)
    server, url = start_server(["--model_dir", str(tmp_path), "--replicas", "1", "--replica_cpus", "0.5"],
                               timeout=120)
    try:
        response = httpx.post(f"{url}/predict", files=image_files(range(3)), timeout=60)
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    finally:
        if server.poll() is None:
            server.kill()
    assert response.status_code == 200 and response.headers[REPLICA_HEADER]
    labels, layers = expected(model, range(3))
    assert [(a["label_id"], a["exit_layer"]) for a in response.json()["predictions"]] == list(zip(labels, layers))


def running_replicas() -> int:
    status = serve.status().applications["default"].deployments["early_exit_classifier"]
    return status.replica_states.get("RUNNING", 0)


def test_replicas_scale_on_queue_depth_and_answer_as_one_server(local_serve: str, tmp_path: Path):
    model = save_served_model(tmp_path)
    replicas = ReplicaOptions(min_replicas=1, max_replicas=2, target_ongoing_requests=1, cpus=0.5,
                              look_back_period_s=11, upscale_delay_s=0)
    options = EngineOptions(max_batch=64, max_wait=0.25)
    serve.run(replica_app(str(tmp_path), options, replicas=replicas), route_prefix="/")
    assert running_replicas() == 1

    # eight clients keep eight requests open (each waits at every stage for a fuller batch, so the CPU stays free
    # for a new replica): eight per replica against a target of one, so Ray adds the second
    statuses, stop = [], threading.Event()

    def client(seed: int) -> None:
        while not stop.is_set():
            statuses.append(httpx.post(f"{local_serve}/predict", files=image_files([seed]), timeout=60).status_code)

    with ThreadPoolExecutor(8) as pool:
        for seed in range(8):
            pool.submit(client, seed)
        deadline = time.monotonic() + 90
        while running_replicas() < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        stop.set()
    assert running_replicas() == 2
    assert statuses and set(statuses) == {200}

    seeds = list(range(12))
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(
            lambda seed: httpx.post(f"{local_serve}/predict", files=image_files([seed]), timeout=60), seeds))
    assert all(response.status_code == 200 for response in responses)
    answers = [response.json()["predictions"][0] for response in responses]
    labels, layers = expected(model, seeds)
    assert len(set(layers)) >= 3, "the uploads should spread over several exits"
    assert [(a["label_id"], a["exit_layer"]) for a in answers] == list(zip(labels, layers))
    assert len({response.headers[REPLICA_HEADER] for response in responses}) == 2


def test_replica_options_are_checked_before_ray_starts():
    with pytest.raises(ValueError, match="need 1 <= min <= max"):
        ReplicaOptions(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="target_ongoing_requests=0"):
        ReplicaOptions(target_ongoing_requests=0)
    with pytest.raises(SystemExit, match="give --replicas too"):
        cli.main(["--model_dir", "m", "--max_replicas", "4"])


def test_the_command_passes_its_replica_flags_to_ray_serve(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "serve_replicas", lambda *arguments: calls.append(arguments))
    cli.main(["--model_dir", "m", "--replicas", "2", "--max_replicas", "4", "--target_ongoing_requests", "3",
              "--replica_cpus", "2", "--max_batch", "16", "--port", "9000", "--ray_address", "auto"])
    model_dir, options, _, replicas, host, port, address = calls[0]
    assert (model_dir, options.max_batch, host, port, address) == ("m", 16, "127.0.0.1", 9000, "auto")
    assert (replicas.min_replicas, replicas.max_replicas, replicas.target_ongoing_requests) == (2, 4, 3)
    assert (replicas.cpus, replicas.threads) == (2, None)
