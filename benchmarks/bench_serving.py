"""Serving under load: the exit-aware engine against dynamic batching of the full model and of batch-level early exit.

The model of `benchmarks.bench_measured_speedup` (12-layer DeiT, hidden 128, 8 LGViT exits on layers 4..11,
trained a few epochs on scikit-learn's digits, or loaded with --checkpoint), calibrated on held-out training digits
to a FLOPs speed-up budget (`utils.analysis.calibration`), so the test digits spread over several exits. Three
systems serve the same test digits, each with the same dynamic batching (`--max_batch`, `--max_wait_ms`, one
worker thread, one image per request):
- (a) `full`: the backbone and final classifier only, every image answered when its batch is done;
- (b) `batch_exit`: the model's batched per-sample early exit (the batch shrinks as images leave), every image
  answered when its batch's deepest image is done;
- (c) `engine`: `utils.serving.ExitEngine`, each image answered at its exit, batches re-formed at every depth.
Measured, interleaved in rotating order:
- saturated throughput: a backlog of `--backlog` images submitted at once, images/s to answer them all (median of
  `--rounds`);
- open-loop Poisson arrivals at `--loads` fractions of (a)'s saturated throughput, at most `--requests` requests or
  `--seconds` seconds each: p50/p95/p99 latency (scheduled arrival to answer), refused requests, and goodput
  (answers within `--slo_ms` per second; by default 4 times (a)'s p50 at the lowest load);
- the HTTP layer's own cost: the engine behind `python -m utils.serving` on 127.0.0.1, Poisson arrivals of PNG
  digits at the load `--http_load`; per request, the client's latency minus the engine's own time for the image.
Targets (ratios within one run): (c)'s saturated throughput >= 0.9 x (a)'s x the FLOPs speed-up; (c)'s p50 at 70%
of (a)'s saturated load >= 40% below (a)'s and (b)'s; (c)'s p99 there no worse than (a)'s.

    python -m benchmarks.bench_serving [--checkpoint DIR] [--save_checkpoint DIR] [--target_speedup 2.0]
        [--max_batch 32] [--max_wait_ms 0] [--order deepest] [--policies deepest:0 shallowest:0 ...]
        [--loads 0.3 0.5 0.7 0.9] [--requests 400] [--seconds 20] [--plot docs/figures/serving_latency.png]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.bench_measured_speedup import benchmark_model, digits_splits, spread_settings
from models.exit_settings import ExitSettings
from utils.analysis.calibration import calibrate, write_exit_settings
from utils.analysis.flops import profile_flops
from utils.analysis.sweep import collect_logits
from utils.data.transforms import image_processor
from utils.serving import EngineFull, ExitEngine, segment_pipeline
from utils.serving.pipelines import WholePipeline, batch_exit_function, full_model_function

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("full", "batch_exit", "engine")
EngineFactory = Callable[[int], ExitEngine]


def system_factories(model: torch.nn.Module, max_batch: int, max_wait: float, order: str, max_delay: float
                     ) -> dict[str, EngineFactory]:
    """Each system as `factory(max_queue) -> ExitEngine` (not started), with the same batching limits."""
    shape = segment_pipeline(model).image_shape
    return {
        "full": partial(ExitEngine, WholePipeline(full_model_function(model), shape), max_batch, max_wait),
        "batch_exit": partial(ExitEngine, WholePipeline(batch_exit_function(model), shape), max_batch, max_wait),
        "engine": partial(ExitEngine, segment_pipeline(model), max_batch, max_wait, order=order, max_delay=max_delay),
    }


def saturated_throughput(factory: EngineFactory, images: torch.Tensor) -> float:
    """Images/s answering `images` submitted at once, one image per request."""
    with factory(len(images)) as engine:
        start = time.perf_counter()
        futures = [future for index in range(len(images)) for future in engine.submit(images[index:index + 1])]
        for future in futures:
            future.result()
        return len(images) / (time.perf_counter() - start)


def poisson_arrivals(rate: float, count: int, seconds: float, seed: int) -> np.ndarray:
    """Arrival times (s from the start) of an open-loop Poisson process, at most `count` and within `seconds`."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, count)
    times = np.cumsum(gaps) - gaps[0]
    return times[times <= seconds]


def open_loop(factory: EngineFactory, images: torch.Tensor, arrivals: np.ndarray, max_queue: int) -> dict:
    """Submit image i % len(images) at arrival i, whatever the answers do; latencies from the scheduled times."""
    finished = np.full(len(arrivals), np.nan)
    refused = 0
    with factory(max_queue) as engine:
        futures = []
        start = time.perf_counter()
        for index, arrival in enumerate(arrivals):
            delay = start + arrival - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            row = index % len(images)
            try:
                future = engine.submit(images[row:row + 1])[0]
            except EngineFull:
                refused += 1
                continue
            future.add_done_callback(lambda _, index=index: finished.__setitem__(index, time.perf_counter()))
            futures.append(future)
        for future in futures:
            future.result()
    latencies = finished - (start + arrivals)
    return {"latencies": latencies[~np.isnan(latencies)], "refused": refused, "duration": float(arrivals[-1])}


def summarise(run: dict, slo: float) -> dict:
    latencies = run["latencies"]
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if len(latencies) else (np.nan,) * 3
    return {"p50": p50, "p95": p95, "p99": p99, "refused": run["refused"], "count": len(latencies),
            "goodput": float((latencies <= slo).sum()) / max(run["duration"], 1e-9)}


def png_bytes(image: torch.Tensor) -> bytes:
    """A digit in [-1, 1] (3, H, W) as an 8-bit PNG (the server normalises it back with mean = std = 0.5)."""
    pixels = ((image.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_overhead(model_dir: str, images: torch.Tensor, rate: float, count: int, args: argparse.Namespace) -> dict:
    """Serve `model_dir` with `python -m utils.serving` on 127.0.0.1 and send Poisson arrivals of PNG digits;
    the client's latency, the engine's own time per image, and their difference (the HTTP layer's cost)."""
    port = free_port()
    command = [sys.executable, "-m", "utils.serving", "--model_dir", model_dir, "--port", str(port), "--threads",
               str(args.threads), "--max_batch", str(args.max_batch), "--max_wait_ms", str(args.max_wait_ms),
               "--order", args.order, "--max_delay_ms", str(args.max_delay_ms), "--max_queue", "4096"]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    files = [png_bytes(image) for image in images]
    try:
        wait_for_health(f"http://127.0.0.1:{port}", server)
        return asyncio.run(http_load(f"http://127.0.0.1:{port}", files, poisson_arrivals(rate, count, 60.0, 7)))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def wait_for_health(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            if server.poll() is not None:
                raise RuntimeError("the server ended before it answered /health") from None
            time.sleep(0.2)
    raise RuntimeError("the server did not start within 120 s")


async def http_load(url: str, files: list[bytes], arrivals: np.ndarray) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=256)) as client:
        for index in range(8):  # warm-up: connections, the first batches
            await client.post("/predict", files={"images": ("w.png", files[index], "image/png")})
        client_seconds, engine_seconds = [], []

        async def send(index: int, scheduled: float) -> None:
            response = await client.post("/predict", files={"images": (f"{index}.png", files[index % len(files)],
                                                                        "image/png")})
            if response.status_code == 200:
                client_seconds.append(time.perf_counter() - scheduled)
                engine_seconds.append(response.json()["predictions"][0]["seconds"])

        start, tasks = time.perf_counter(), []
        for index, arrival in enumerate(arrivals):
            await asyncio.sleep(max(0.0, start + arrival - time.perf_counter()))
            tasks.append(asyncio.create_task(send(index, start + arrival)))
        await asyncio.gather(*tasks)
        served = server_means((await client.get("/metrics")).text)
    client_seconds, engine_seconds = np.array(client_seconds), np.array(engine_seconds)
    return {"count": len(client_seconds), "client_p50": float(np.median(client_seconds)),
            "engine_p50": float(np.median(engine_seconds)),
            "overhead_p50": float(np.median(client_seconds - engine_seconds)),
            "overhead_p99": float(np.percentile(client_seconds - engine_seconds, 99)),
            "server_overhead_mean": served["serving_request_seconds"] - served["serving_image_seconds"]}


def server_means(metrics_text: str) -> dict[str, float]:
    """Mean of each latency histogram the server exports (warm-up requests included)."""
    sums, counts = {}, {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                sums[family.name] = sample.value
            elif sample.name.endswith("_count"):
                counts[family.name] = sample.value
    return {name: sums[name] / counts[name] for name in sums if counts.get(name)}


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a saved model directory (from bench_measured_speedup) to load")
    parser.add_argument("--save_checkpoint", help="where to save the trained model")
    parser.add_argument("--train_epochs", type=int, default=6)
    parser.add_argument("--exits", choices=["halves", "even", "budget"], default="halves",
                        help="per-exit thresholds at which half of the held-out digits still running leave at each "
                             "exit, or the same number at every exit and the end, or one threshold calibrated to "
                             "--target_speedup")
    parser.add_argument("--target_speedup", type=float, default=2.0, help="FLOPs speed-up to calibrate for")
    parser.add_argument("--max_batch", type=int, default=32)
    parser.add_argument("--max_wait_ms", type=float, default=0.0)
    parser.add_argument("--order", default="fullest", help="the engine's order among ready stages")
    parser.add_argument("--max_delay_ms", type=float, default=float("inf"),
                        help="the engine runs a stage whose oldest image waited this long first")
    parser.add_argument("--policies", nargs="*", default=[],
                        help="extra engine policies to compare, as ORDER:MAX_WAIT_MS (e.g. shallowest:0 deepest:5)")
    parser.add_argument("--loads", type=float, nargs="*", default=[0.3, 0.5, 0.7, 0.9],
                        help="offered loads, as fractions of (a)'s saturated throughput")
    parser.add_argument("--requests", type=int, default=400, help="most requests per load")
    parser.add_argument("--seconds", type=float, default=20.0, help="longest arrival span per load")
    parser.add_argument("--backlog", type=int, default=512, help="images submitted at once to saturate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slo_ms", type=float, help="latency objective of goodput (default: 4 x (a)'s lowest p50)")
    parser.add_argument("--max_queue", type=int, default=1024)
    parser.add_argument("--http_load", type=float, default=0.5, help="load of the HTTP run (fraction of (a)'s)")
    parser.add_argument("--http_requests", type=int, default=300)
    parser.add_argument("--no_http", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", help="write latency-against-load curves to this image file")
    return parser


def calibrated_model(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, float, dict]:
    """The benchmark model with thresholds chosen on the held-out training digits (`--exits`); its test digits,
    their FLOPs speed-up and how many leave at each layer."""
    splits = digits_splits()
    model = benchmark_model(splits, args.checkpoint, args.train_epochs, args.save_checkpoint)
    profile = profile_flops(model)
    if args.exits == "even":
        settings = spread_settings(model, splits["calibration"][0])
    elif args.exits == "halves":
        settings = halving_settings(model, splits["calibration"][0])
    else:
        settings = calibrate(collect_logits(model, [splits["calibration"]]), profile, "confidence",
                             target_speedup=args.target_speedup).settings
    write_exit_settings(model.config, settings)
    images = splits["test"][0]
    with torch.inference_mode():
        exit_layer = model(images).exit_layer
    spread = {int(layer): int(count) for layer, count in zip(*torch.unique(exit_layer, return_counts=True))}
    return model, images, profile.flops_speedup(exit_layer), spread


def halving_settings(model: torch.nn.Module, images: torch.Tensor) -> ExitSettings:
    """Per-exit confidence thresholds at which half of `images` still running leave at each exit (most leave early,
    a few run to the end, as a calibrated model's images do on real data)."""
    cache = collect_logits(model, [(images, torch.zeros(len(images), dtype=torch.long))])
    confidences = torch.softmax(cache.exit_logits, dim=-1).max(-1).values
    running, thresholds = torch.ones(len(images), dtype=torch.bool), []
    for scores in confidences:
        thresholds.append(scores[running].median().item() if running.any() else 1.0)
        running &= scores <= thresholds[-1]
    return ExitSettings("confidence", tuple(thresholds), 1)


def policy_engines(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, EngineFactory]:
    """The three systems, plus the engine under every extra policy of --policies (ORDER:MAX_WAIT_MS[:MAX_DELAY_MS])."""
    factories = system_factories(model, args.max_batch, args.max_wait_ms / 1000, args.order, args.max_delay_ms / 1000)
    for policy in args.policies:
        order, wait, *delay = policy.split(":")
        factories[f"engine[{policy}]"] = partial(  # ExitEngine(pipeline, max_batch, max_wait, max_queue, ...)
            ExitEngine, segment_pipeline(model), args.max_batch, float(wait) / 1000, order=order,
            max_delay=float(delay[0]) / 1000 if delay else float("inf"))
    return factories


def rotate(names: list[str], shift: int) -> list[str]:
    return names[shift % len(names):] + names[:shift % len(names)]


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)
    model, images, flops_speedup, spread = calibrated_model(args)
    print(f"calibrated ({model.config.exit_strategy}, threshold {model.config.threshold}); {len(images)} test digits "
          f"leave at layers {spread}; FLOPs speed-up {flops_speedup:.3f}")
    print(f"batching: max_batch {args.max_batch}, max_wait {args.max_wait_ms} ms, engine order {args.order}; "
          f"torch threads {torch.get_num_threads()}")
    factories = policy_engines(model, args)
    saturated = measure_saturation(factories, images[torch.arange(args.backlog) % len(images)], args.rounds)
    share = saturated["engine"] / (saturated["full"] * flops_speedup)
    print(f"engine / (full x FLOPs speed-up {flops_speedup:.3f}) = {share:.3f}   (target >= 0.9)")
    table = measure_loads(factories, images, saturated["full"], args)
    report_targets(table, args.loads, saturated, flops_speedup, share)
    if args.plot:
        plot_curves(table, list(factories), args.loads, args.plot)
    if not args.no_http:
        with tempfile.TemporaryDirectory() as model_dir:
            model.save_pretrained(model_dir)
            image_processor(model.config.image_size, [0.5] * 3, [0.5] * 3).save_pretrained(model_dir)
            http = http_overhead(model_dir, images, args.http_load * saturated["full"], args.http_requests, args)
        print(f"\nHTTP ({http['count']} requests at {args.http_load:.2f} load, 127.0.0.1): client p50 "
              f"{http['client_p50'] * 1000:.2f} ms, engine p50 {http['engine_p50'] * 1000:.2f} ms; HTTP layer "
              f"(client latency - engine time) p50 {http['overhead_p50'] * 1000:.2f} ms, p99 "
              f"{http['overhead_p99'] * 1000:.2f} ms; inside the server (request handler - engine time, means) "
              f"{http['server_overhead_mean'] * 1000:.2f} ms")


def measure_saturation(factories: dict[str, EngineFactory], backlog: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median saturated throughput of every system over `rounds` rounds in rotating order (after a warm-up)."""
    names = list(factories)
    for name in names:
        saturated_throughput(factories[name], backlog[:64])
    rates = {name: [] for name in names}
    for round_index in range(rounds):
        for name in rotate(names, round_index):
            rates[name].append(saturated_throughput(factories[name], backlog))
    saturated = {name: float(np.median(values)) for name, values in rates.items()}
    print("\nsaturated throughput (images/s, median of rounds):")
    for name in names:
        print(f"  {name:<24} {saturated[name]:8.1f}  ({saturated[name] / saturated['full']:.3f} x full)")
    return saturated


def measure_loads(factories: dict[str, EngineFactory], images: torch.Tensor, full_rate: float,
                  args: argparse.Namespace) -> dict[tuple[str, float], dict]:
    """Every system under open-loop Poisson arrivals at each load (same arrivals for all, rotating order); prints
    and returns the latency percentiles and goodput per (system, load)."""
    names = list(factories)
    results = {}
    for load_index, load in enumerate(args.loads):
        arrivals = poisson_arrivals(load * full_rate, args.requests, args.seconds, seed=load_index)
        for name in rotate(names, load_index):
            results[(name, load)] = open_loop(factories[name], images, arrivals, args.max_queue)
    slo = args.slo_ms / 1000 if args.slo_ms else 4 * float(np.median(results[("full", args.loads[0])]["latencies"]))
    print(f"\nopen-loop Poisson arrivals (latency objective {slo * 1000:.1f} ms for goodput):")
    print(f"{'load':>5} {'rate/s':>7} {'system':<24} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'refused':>7} "
          f"{'goodput/s':>9}")
    table = {}
    for load in args.loads:
        for name in names:
            row = table[(name, load)] = summarise(results[(name, load)], slo)
            print(f"{load:5.2f} {load * full_rate:7.1f} {name:<24} {row['p50'] * 1000:7.2f} "
                  f"{row['p95'] * 1000:7.2f} {row['p99'] * 1000:7.2f} {row['refused']:7d} {row['goodput']:9.1f}")
    return table


def report_targets(table: dict, loads: list[float], saturated: dict, flops_speedup: float, share: float) -> None:
    """Print the issue's targets as ratios of this run."""
    print("\ntargets:")
    print(f"  saturated throughput: engine / (full x FLOPs speed-up) = {share:.3f} (>= 0.9: "
          f"{'met' if share >= 0.9 else 'missed'})")
    load = min(loads, key=lambda value: abs(value - 0.7))
    engine, full, batch = (table[(name, load)] for name in ("engine", "full", "batch_exit"))
    for other, row in (("full", full), ("batch_exit", batch)):
        cut = 1 - engine["p50"] / row["p50"]
        print(f"  p50 at load {load:.2f}: engine {engine['p50'] * 1000:.2f} ms vs {other} {row['p50'] * 1000:.2f} ms, "
              f"{cut * 100:.0f}% lower (>= 40%: {'met' if cut >= 0.4 else 'missed'})")
    ratio = engine["p99"] / full["p99"]
    print(f"  p99 at load {load:.2f}: engine / full = {ratio:.3f} (<= 1: {'met' if ratio <= 1 else 'missed'})")


def plot_curves(table: dict, names: list[str], loads: list[float], path: str) -> None:
    """p50 and p99 latency against the offered load, one line per system (a PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharex=True)
    for axis, quantile in zip(axes, ("p50", "p99")):
        for name in names:
            axis.plot(loads, [table[(name, load)][quantile] * 1000 for load in loads], marker="o", label=name)
        axis.set_xlabel("offered load (share of full's saturated rate)")
        axis.set_ylabel(f"{quantile} latency (ms)")
        axis.set_yscale("log")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path)
    print(f"curves written to {path}")


if __name__ == "__main__":
    main()
