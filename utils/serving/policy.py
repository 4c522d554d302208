"""Which stage the serving engine runs next.

Every stage has a queue: new images wait at stage 0, the survivors of earlier batches at the stage they reached.
A queue is *runnable* once it holds `max_batch` rows or its oldest row has waited `max_wait` seconds there
(`max_wait=0`: every non-empty queue, the engine never idles while work waits). Among runnable queues the engine
takes, by `order`:
- `deepest`: the deepest one. The images that have been in the engine longest finish first, and the hidden states
  held stay few;
- `shallowest`: new images first, so survivors gather into larger deep batches (`max_delay` then bounds how long a
  row may wait at a stage before its queue goes first, deepest first, so no depth starves);
- `oldest`: the queue whose oldest row entered the engine first;
- `fullest` (the default): the queue holding the most rows (counted up to `max_batch`), the deepest among equals.
  Under load every stage then runs on batches as full as the waiting rows allow: a deep queue runs once its
  survivors outnumber the new images, new images go first when they pile up (and most of them leave at the first
  exits), and at light load, with a row or two per queue, it is `deepest`. `max_delay` bounds how long a row may
  wait.
With none runnable it sleeps until the first queue falls due or a row arrives. The default was chosen by
measurement (`benchmarks/bench_serving.py`, docs/serving.md): on the CPU, `fullest` raised the saturated throughput
3-5% over `deepest` at about the same median latency, while waiting for fuller batches (`max_wait` > 0) and
new-images-first orders raised the tail latency far more than they raised throughput.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ORDERS = ("deepest", "shallowest", "oldest", "fullest")


@dataclass(frozen=True)
class QueueView:
    """What the policy sees of one stage's queue: its row count, when its oldest row joined it and when that row
    entered the engine (seconds, one monotonic clock); the times are unused when `rows` is 0."""

    rows: int
    oldest_queued: float
    oldest_arrived: float


def choose_stage(queues: Sequence[QueueView], now: float, max_batch: int, max_wait: float,
                 order: str = "fullest", max_delay: float = float("inf")) -> tuple[int | None, float | None]:
    """The stage to run now, or (None, seconds until a queue falls due; None when every queue is empty)."""
    if order not in ORDERS:
        raise ValueError(f"order={order!r}: choose one of {', '.join(ORDERS)}.")
    waiting = [stage for stage, queue in enumerate(queues) if queue.rows]
    if not waiting:
        return None, None
    runnable = [s for s in waiting if queues[s].rows >= max_batch or now - queues[s].oldest_queued >= max_wait]
    if not runnable:
        return None, min(queues[s].oldest_queued + max_wait for s in waiting) - now
    overdue = [s for s in runnable if now - queues[s].oldest_queued >= max_delay]
    return (max(overdue) if overdue else _pick(runnable, queues, order, max_batch)), None


def _pick(stages: list[int], queues: Sequence[QueueView], order: str, max_batch: int) -> int:
    if order == "deepest":
        return max(stages)
    if order == "shallowest":
        return min(stages)
    if order == "fullest":
        return max(stages, key=lambda stage: (min(queues[stage].rows, max_batch), stage))
    return min(stages, key=lambda stage: queues[stage].oldest_arrived)
