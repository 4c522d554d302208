"""The exit-aware serving engine: per-stage queues, batches re-formed at every depth, answers at each exit.

Requests (one image or a few) join the queue of stage 0. One worker thread repeatedly picks a stage
(`utils.serving.policy`), takes up to `max_batch` rows from its queue, runs the stage on them, answers every row
whose exit fired (label, probabilities, exit layer, seconds since it was submitted) and puts the others, with their
hidden states and criterion states, in the next stage's queue. A batch at depth k therefore gathers the survivors
of several earlier batches: deep layers keep running on full batches while easy images are answered at once.

The engine holds at most `max_queue` images (waiting or running, at every depth); `submit` refuses more with
`EngineFull` (memory never grows without bound). `stop` refuses new images and, by default, finishes every image
already admitted before the worker ends. Every admitted image is answered exactly once: with a `Prediction`, or
with the exception its batch raised.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import torch

from models.criteria import State

from .pipelines import SegmentPipeline, StageOutput, WholePipeline
from .policy import ORDERS, QueueView, choose_stage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The answer for one image.

    Attributes:
        label: predicted class index.
        probabilities: (K,) float32 softmax of the logits it left with.
        exit_layer: 1-based layer it left at (the number of blocks: the final classifier answered).
        seconds: time from `submit` to this answer.
    """

    label: int
    probabilities: torch.Tensor
    exit_layer: int
    seconds: float


class EngineFull(RuntimeError):
    """The engine holds `max_queue` images already; `retry_after` estimates the seconds until it has room."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class EngineStopped(RuntimeError):
    """The engine is stopping or stopped and takes no new images."""


class Observer(Protocol):
    """Receives the engine's events (`utils.serving.metrics.ServingMetrics` counts them)."""

    def batch(self, stage: int, rows: int, seconds: float) -> None: ...

    def answered(self, prediction: Prediction) -> None: ...


@dataclass
class Chunk:
    """Rows that wait together at one stage: their inputs (images or hidden states), criterion states, futures and
    the times they entered the engine (`arrived`) and this queue (`queued`)."""

    inputs: torch.Tensor
    state: State
    futures: list[Future]
    arrived: list[float]
    queued: float

    def split(self, rows: int) -> tuple[Chunk, Chunk]:
        """(the first `rows` rows, the rest)."""
        head = Chunk(self.inputs[:rows], {k: v[:rows] for k, v in self.state.items()}, self.futures[:rows],
                     self.arrived[:rows], self.queued)
        tail = Chunk(self.inputs[rows:], {k: v[rows:] for k, v in self.state.items()}, self.futures[rows:],
                     self.arrived[rows:], self.queued)
        return head, tail


def join(chunks: Sequence[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    state = {name: torch.cat([chunk.state[name] for chunk in chunks]) for name in chunks[0].state}
    return Chunk(torch.cat([chunk.inputs for chunk in chunks]), state,
                 [future for chunk in chunks for future in chunk.futures],
                 [moment for chunk in chunks for moment in chunk.arrived], chunks[0].queued)


class StageQueue:
    """The rows waiting at one stage, in the order they arrived there."""

    def __init__(self) -> None:
        self.chunks: deque[Chunk] = deque()
        self.rows = 0

    def put(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        self.rows += len(chunk.futures)

    def take(self, max_rows: int) -> Chunk:
        """Up to `max_rows` rows from the front, as one chunk."""
        taken, count = [], 0
        while self.chunks and count < max_rows:
            chunk = self.chunks.popleft()
            if count + len(chunk.futures) > max_rows:
                chunk, rest = chunk.split(max_rows - count)
                self.chunks.appendleft(rest)
            taken.append(chunk)
            count += len(chunk.futures)
        self.rows -= count
        return join(taken)

    def view(self) -> QueueView:
        if not self.chunks:
            return QueueView(0, 0.0, 0.0)
        head = self.chunks[0]
        return QueueView(self.rows, head.queued, head.arrived[0])


class ExitEngine:
    """Serve a `Pipeline` (`utils.serving.pipelines`) with per-stage dynamic batching.

    Args:
        pipeline: the stages to run (`segment_pipeline(model)` for early exit at every exit).
        max_batch: most rows one stage runs at once.
        max_wait: seconds a row may wait at a stage for a fuller batch before the stage must run
            (`utils.serving.policy`); 0 never holds work back.
        max_queue: most images admitted and not yet answered, over every stage.
        order: which stage goes first among those ready (`utils.serving.policy.ORDERS`).
        observer: receives every batch and every answer (metrics).
        max_delay: seconds after which a row waiting at a stage puts its queue first, whatever `order` says.
    """

    def __init__(self, pipeline: SegmentPipeline | WholePipeline, max_batch: int = 32, max_wait: float = 0.0,
                 max_queue: int = 256, order: str = "fullest", observer: Observer | None = None,
                 max_delay: float = float("inf")):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError(f"max_batch={max_batch} and max_queue={max_queue} must be >= 1 and "
                             f"max_wait={max_wait} >= 0.")
        if order not in ORDERS:
            raise ValueError(f"order={order!r}: choose one of {', '.join(ORDERS)}.")
        self.pipeline = pipeline
        self.max_batch, self.max_wait, self.max_queue, self.order = max_batch, max_wait, max_queue, order
        self.max_delay = max_delay
        self.observer = observer
        self.queues = [StageQueue() for _ in range(pipeline.num_stages)]
        self.in_flight = 0
        self.answered = 0
        self.busy_seconds = 0.0
        self.stopping = False
        self.changed = threading.Condition()
        self.worker = threading.Thread(target=self.serve, name="exit-engine", daemon=True)

    def start(self) -> ExitEngine:
        self.worker.start()
        return self

    def __enter__(self) -> ExitEngine:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def submit(self, images: torch.Tensor) -> list[Future]:
        """Admit images (n, C, H, W), preprocessed; returns one future per image, resolved with its `Prediction`.

        Raises:
            EngineFull: admitting them would exceed `max_queue` (nothing is admitted).
            EngineStopped: the engine is stopping.
        """
        shape = self.pipeline.image_shape
        if images.ndim != 4 or tuple(images.shape[1:]) != shape or not images.is_floating_point():
            raise ValueError(f"Images must be a float tensor (n, {', '.join(map(str, shape))}); got "
                             f"{images.dtype} {tuple(images.shape)}.")
        count = len(images)
        with self.changed:
            if self.stopping:
                raise EngineStopped("The engine is shutting down and takes no new images.")
            if not self.worker.is_alive():
                raise EngineStopped("The engine is not running: call start() first.")
            if self.in_flight + count > self.max_queue:
                raise EngineFull(f"The engine holds {self.in_flight} of {self.max_queue} images; {count} more do not "
                                 "fit.", self.retry_after())
            now = time.perf_counter()
            futures = [Future() for _ in range(count)]
            self.queues[0].put(Chunk(images, self.pipeline.initial_state(count), futures, [now] * count, now))
            self.in_flight += count
            self.changed.notify()
        return futures

    def retry_after(self) -> float:
        """Seconds until the images held now are likely answered (at the throughput seen so far)."""
        per_image = self.busy_seconds / self.answered if self.answered else 0.0
        return max(1.0, math.ceil(self.in_flight * per_image))

    def queue_depths(self) -> list[int]:
        """Rows waiting at each stage."""
        with self.changed:
            return [queue.rows for queue in self.queues]

    def close(self) -> None:
        """Refuse new images from now on and run what is admitted at once (no batch waits for more rows); the worker
        ends when every admitted image is answered. Returns immediately."""
        with self.changed:
            self.stopping = True
            self.changed.notify()

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """`close`, then wait for the worker to end. Without `drain`, the images still waiting are answered with
        `EngineStopped` instead of being run."""
        with self.changed:
            self.stopping = True
            if not drain:
                for queue in self.queues:
                    if queue.rows:
                        chunk = queue.take(queue.rows)
                        self.in_flight -= len(chunk.futures)
                        for future in chunk.futures:
                            future.set_exception(EngineStopped("The engine stopped before this image ran."))
            self.changed.notify()
        if self.worker.is_alive():
            self.worker.join(timeout)

    def serve(self) -> None:
        """The worker: pick a stage, run a batch there, answer and pass on; until stopped and empty."""
        while True:
            with self.changed:
                while True:
                    max_wait = 0.0 if self.stopping else self.max_wait
                    views = [queue.view() for queue in self.queues]
                    stage, wake = choose_stage(views, time.perf_counter(), self.max_batch, max_wait, self.order,
                                               self.max_delay)
                    if stage is not None:
                        break
                    if self.stopping and self.in_flight == 0:
                        return
                    self.changed.wait(wake)
                chunk = self.queues[stage].take(self.max_batch)
            self.run_batch(stage, chunk)

    def run_batch(self, stage: int, chunk: Chunk) -> None:
        """Run `stage` on `chunk`: answer the rows that leave, queue the others at the next stage."""
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                output = self.pipeline.run(stage, chunk.inputs, chunk.state)
                leaving = output.leaving
                probabilities = torch.softmax(output.logits[leaving.to(output.logits.device)].float(), -1).cpu()
                survivors = None if bool(leaving.all()) else surviving_rows(chunk, output)
        except Exception as error:  # the batch's images are answered with the error; the engine goes on
            logger.exception("Stage %d failed on a batch of %d images.", stage, len(chunk.futures))
            self.finish(chunk.futures, time.perf_counter() - start)
            for future in chunk.futures:
                future.set_exception(error)
            return
        now = time.perf_counter()
        if self.observer is not None:
            self.observer.batch(stage, len(chunk.futures), now - start)
        rows = leaving.nonzero().flatten().tolist()
        predictions = [Prediction(int(probs.argmax()), probs, layer, now - chunk.arrived[row])
                       for row, probs, layer in zip(rows, probabilities, output.exit_layer[leaving].tolist())]
        if self.observer is not None:
            for prediction in predictions:
                self.observer.answered(prediction)
        if survivors is not None:
            survivors.queued = now
        answered = [chunk.futures[row] for row in rows]
        # Counted (metrics, in-flight images) before the answers go out, so whoever holds an answer sees it counted.
        self.finish(answered, now - start, survivors, stage + 1)
        for future, prediction in zip(answered, predictions):
            future.set_result(prediction)

    def finish(self, answered: list[Future], seconds: float, survivors: Chunk | None = None,
               next_stage: int = 0) -> None:
        with self.changed:
            self.in_flight -= len(answered)
            self.answered += len(answered)
            self.busy_seconds += seconds
            if survivors is not None:
                self.queues[next_stage].put(survivors)
            self.changed.notify()


def surviving_rows(chunk: Chunk, output: StageOutput) -> Chunk:
    """The rows of `chunk` that did not leave, with their next-stage inputs and criterion states."""
    staying = ~output.leaving
    keep = staying.tolist()
    rows = staying.to(output.hidden.device)
    return Chunk(output.hidden[rows], {name: value[rows] for name, value in output.state.items()},
                 [future for future, stays in zip(chunk.futures, keep) if stays],
                 [arrived for arrived, stays in zip(chunk.arrived, keep) if stays], 0.0)
