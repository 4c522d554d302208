"""The server as Ray Serve replicas: past one device or one machine.

Every replica is the whole server of `utils.serving.server.build_app` (its own engine, model copy and metrics) in a
Ray actor; Ray Serve's proxy takes the HTTP requests and routes each to a replica that has room. The number of
replicas moves between `min_replicas` and `max_replicas` on the requests each replica holds (Ray Serve's
autoscaling on ongoing requests: queued at the replica or being answered), aiming at `target_ongoing_requests`
each. A replica admits at most `max_ongoing_requests` at once, Ray holds at most `max_queued_requests` more and
answers 503 beyond them, so memory stays bounded as in one server. Each answer names the replica that gave it in
the header `X-Replica`.

    python -m utils.serving --model_dir MODEL_DIR --replicas 2 [--max_replicas 8] [--ray_address auto]

Ray is imported only here, so the single-process server does not need it running.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import FastAPI, Request, Response

from .app import RequestLimits
from .server import EngineOptions, build_app

logger = logging.getLogger(__name__)

REPLICA_HEADER = "X-Replica"
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ReplicaOptions:
    """How many replicas run and what each one is given.

    Attributes:
        min_replicas, max_replicas: the range autoscaling moves in (equal: a fixed number of replicas).
        target_ongoing_requests: the requests per replica autoscaling aims at (the queue depth it scales on).
        max_ongoing_requests: the most requests one replica holds at once (default: the engine's `max_queue`).
        max_queued_requests: the most requests Ray holds for busy replicas; more are answered 503.
        cpus, gpus: Ray resources of one replica (a GPU each by default when the model runs on CUDA).
        threads: torch threads in a replica (default: `cpus`).
        look_back_period_s: the window the requests per replica are averaged over.
        upscale_delay_s, downscale_delay_s: how long the load must stay above or below target before Ray acts.
    """

    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 8.0
    max_ongoing_requests: int | None = None
    max_queued_requests: int = 256
    cpus: float = 1.0
    gpus: float | None = None
    threads: int | None = None
    look_back_period_s: float = 30.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"Replicas from {self.min_replicas} to {self.max_replicas}: need 1 <= min <= max "
                             "(e.g. --replicas 2 --max_replicas 4).")
        if self.target_ongoing_requests <= 0:
            raise ValueError(f"target_ongoing_requests={self.target_ongoing_requests}: give a positive number.")


def replica_app(model_dir: str, options: EngineOptions = EngineOptions(), limits: RequestLimits = RequestLimits(),
                replicas: ReplicaOptions = ReplicaOptions()):
    """The Ray Serve application serving `model_dir` (`serve.run` it, or `serve run module:app` a module that
    builds it)."""
    from ray import serve

    gpus = replicas.gpus if replicas.gpus is not None else float(options.device.startswith("cuda"))
    threads = replicas.threads or max(1, int(replicas.cpus))

    def build_replica() -> FastAPI:
        torch.set_num_threads(threads)
        app = build_app(model_dir, options, limits)
        name_answers(app, serve.get_replica_context().replica_id.unique_id)
        return app

    deployment = serve.deployment(
        serve.ingress(build_replica)(), name="early_exit_classifier",
        autoscaling_config={"min_replicas": replicas.min_replicas, "initial_replicas": replicas.min_replicas,
                            "max_replicas": replicas.max_replicas,
                            "target_ongoing_requests": replicas.target_ongoing_requests,
                            "look_back_period_s": replicas.look_back_period_s,
                            "upscale_delay_s": replicas.upscale_delay_s,
                            "downscale_delay_s": replicas.downscale_delay_s},
        max_ongoing_requests=replicas.max_ongoing_requests or options.max_queue,
        max_queued_requests=replicas.max_queued_requests,
        ray_actor_options={"num_cpus": replicas.cpus, "num_gpus": gpus})
    return deployment.bind()


def name_answers(app: FastAPI, replica: str) -> None:
    """Every answer of `app` carries `X-Replica: replica`."""

    @app.middleware("http")
    async def add_replica_header(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers[REPLICA_HEADER] = replica
        return response


def start_serve(host: str, port: int, ray_address: str | None = None, num_cpus: int | None = None) -> None:
    """Start (or join, with `ray_address`) a Ray cluster and Ray Serve's HTTP proxy on host:port.

    The replicas import this repository from the path it has here, and read the model directory at the path given:
    on a cluster of several machines both must be at the same paths on every node (a shared filesystem)."""
    import ray
    from ray import serve

    ray.init(address=ray_address, num_cpus=num_cpus, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    serve.start(http_options={"host": host, "port": port})


def serve_replicas(model_dir: str, options: EngineOptions, limits: RequestLimits, replicas: ReplicaOptions,
                   host: str, port: int, ray_address: str | None = None) -> None:
    """Serve `model_dir` as replicas on host:port until Ctrl-C or SIGTERM, then stop them and Ray."""
    import ray
    from ray import serve

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop: a second signal must not cut the shutdown short
        raise KeyboardInterrupt

    start_serve(host, port, ray_address)
    signal.signal(signal.SIGTERM, interrupt)  # after Ray's start, which sets a handler of its own
    try:
        serve.run(replica_app(model_dir, options, limits, replicas), route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        logger.info("Stopping the replicas.")
    finally:
        serve.shutdown()
        ray.shutdown()
