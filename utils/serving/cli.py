"""Serve a saved model with exits, or its ONNX export, over HTTP.

    python -m utils.serving --model_dir MODEL_DIR [--host 127.0.0.1] [--port 8000] [--max_batch 32]
        [--max_wait_ms 0] [--max_queue 256] [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--compile]
        [--replicas N [--max_replicas M] [--target_ongoing_requests Q] [--replica_cpus C] [--ray_address ADDRESS]]

Then `curl -F images=@photo.jpg http://127.0.0.1:8000/predict`; `/health` and `/metrics` (Prometheus). Each image
leaves at the exit the model's saved exit settings choose. Stop with Ctrl-C or SIGTERM: what is in flight is
answered first. With `--replicas`, the server runs as Ray Serve replicas (`utils.serving.replicas`), from N up
to M on the requests each one holds.
"""

from __future__ import annotations

import argparse
import logging

import torch
import uvicorn

from .app import RequestLimits
from .policy import ORDERS
from .replicas import ReplicaOptions, serve_replicas
from .server import DTYPES, EngineOptions, build_app


def build_parser() -> argparse.ArgumentParser:
    """The command line of the server."""
    defaults, limits = EngineOptions(), RequestLimits()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True,
                        help="a saved model directory (save_pretrained), or an ONNX export (python -m utils.export)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max_batch", type=int, default=defaults.max_batch, help="most images one stage runs at once")
    parser.add_argument("--max_wait_ms", type=float, default=defaults.max_wait * 1000,
                        help="most milliseconds an image waits at a stage for a fuller batch")
    parser.add_argument("--max_queue", type=int, default=defaults.max_queue,
                        help="most images held at once; more are answered 503 with Retry-After")
    parser.add_argument("--order", choices=ORDERS, default=defaults.order, help="which ready stage runs first")
    parser.add_argument("--max_delay_ms", type=float, default=defaults.max_delay * 1000,
                        help="a stage whose oldest image waited this long runs first, whatever --order says")
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=list(DTYPES), default=defaults.dtype)
    parser.add_argument("--compile", action="store_true", help="compile every segment with torch.compile")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--max_images", type=int, default=limits.max_images, help="most images per request")
    parser.add_argument("--max_image_bytes", type=int, default=limits.max_image_bytes, help="largest image file")
    replicas = ReplicaOptions()
    group = parser.add_argument_group("replicas on Ray Serve")
    group.add_argument("--replicas", type=int, help="serve with this many Ray Serve replicas (the least, with "
                                                    "--max_replicas); default: one process, no Ray")
    group.add_argument("--max_replicas", type=int, help="scale up to this many replicas on the requests each holds")
    group.add_argument("--target_ongoing_requests", type=float, default=replicas.target_ongoing_requests,
                       help="requests per replica that autoscaling aims at")
    group.add_argument("--replica_cpus", type=float, default=replicas.cpus,
                       help="CPUs of one replica (also its torch threads unless --threads)")
    group.add_argument("--ray_address", help="join this Ray cluster (e.g. auto) instead of starting one here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = EngineOptions(args.max_batch, args.max_wait_ms / 1000, args.max_queue, args.order,
                            args.max_delay_ms / 1000, args.device, args.dtype, args.compile)
    limits = RequestLimits(args.max_images, args.max_image_bytes)
    if args.replicas is not None:
        replicas = ReplicaOptions(args.replicas, args.max_replicas or args.replicas, args.target_ongoing_requests,
                                  cpus=args.replica_cpus, threads=args.threads)
        serve_replicas(args.model_dir, options, limits, replicas, args.host, args.port, args.ray_address)
        return
    if args.max_replicas is not None or args.ray_address is not None:
        raise SystemExit("--max_replicas and --ray_address serve on Ray Serve: give --replicas too.")
    app = build_app(args.model_dir, options, limits)
    DrainingServer(uvicorn.Config(app, host=args.host, port=args.port, log_level="info")).run()


class DrainingServer(uvicorn.Server):
    """uvicorn's server; on SIGINT/SIGTERM the engine also stops admitting and runs what it holds at once, so the
    open requests uvicorn waits for are answered without waiting for fuller batches."""

    def handle_exit(self, sig: int, frame: object) -> None:
        self.config.app.state.engine.close()
        super().handle_exit(sig, frame)
