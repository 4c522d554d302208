"""The exit-aware serving engine: the offline batched early exit's answers for any arrival order and batch limits,
early answers at early exits, a bounded queue, draining shutdown, failures answered once."""

from __future__ import annotations

import random
import threading

import pytest
import torch
from serving_helpers import GatedPipeline, spread_model

from utils.export import export_onnx
from utils.serving import EngineFull, EngineStopped, ExitEngine, onnx_pipeline, segment_pipeline
from utils.serving.pipelines import WholePipeline, batch_exit_function, full_model_function
from utils.serving.policy import QueueView, choose_stage


class Answers:
    """Observer counting every answer and batch."""

    def __init__(self) -> None:
        self.predictions, self.batches = [], []
        self.lock = threading.Lock()

    def batch(self, stage: int, rows: int, seconds: float) -> None:
        self.batches.append((stage, rows))

    def answered(self, prediction) -> None:
        with self.lock:
            self.predictions.append(prediction)


def serve_in_random_order(engine: ExitEngine, images: torch.Tensor, seed: int) -> list:
    """Submit the images shuffled, in requests of 1-4 images from two threads; the predictions in image order."""
    order = list(range(len(images)))
    rng = random.Random(seed)
    rng.shuffle(order)
    requests, start = [], 0
    while start < len(order):
        size = rng.randint(1, 4)
        requests.append(order[start:start + size])
        start += size
    futures = {}

    def send(part: list[list[int]]) -> None:
        for rows in part:
            futures.update(zip(rows, engine.submit(images[rows])))

    threads = [threading.Thread(target=send, args=(requests[half::2],)) for half in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [futures[row].result(timeout=30) for row in range(len(images))]


def assert_offline_answers(model: torch.nn.Module, images: torch.Tensor, predictions: list) -> None:
    with torch.no_grad():
        offline = model(images)
    assert [p.exit_layer for p in predictions] == offline.exit_layer.tolist()
    assert [p.label for p in predictions] == offline.logits.argmax(-1).tolist()
    probabilities = torch.stack([p.probabilities for p in predictions])
    torch.testing.assert_close(probabilities, offline.logits.softmax(-1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("max_batch,max_wait,order", [(1, 0.0, "deepest"), (3, 0.002, "shallowest"),
                                                       (5, 0.0, "oldest"), (64, 0.005, "deepest"),
                                                       (4, 0.0, "fullest")])
@pytest.mark.parametrize("criterion", ["confidence", "patient_and_confident"])
def test_engine_gives_the_offline_batched_early_exit_for_any_arrival_order(max_batch, max_wait, order, criterion):
    model, images = spread_model("DeiT", criterion)
    with torch.no_grad():
        layers = model(images).exit_layer
    assert len(set(layers.tolist())) >= 3, "the images should spread over several exits"
    answers = Answers()
    with ExitEngine(segment_pipeline(model), max_batch, max_wait, order=order, observer=answers) as engine:
        predictions = serve_in_random_order(engine, images, seed=max_batch)
    assert_offline_answers(model, images, predictions)
    assert len(answers.predictions) == len(images)  # each image answered once
    assert all(rows <= max_batch for _, rows in answers.batches)


@pytest.mark.parametrize("criterion", ["entropy", "patience"])
def test_engine_gives_the_offline_answers_on_swin(criterion):
    model, images = spread_model("Swin", criterion, num_images=16)
    with ExitEngine(segment_pipeline(model), max_batch=4) as engine:
        predictions = serve_in_random_order(engine, images, seed=1)
    assert_offline_answers(model, images, predictions)


def test_engine_on_the_onnx_segments_gives_pytorchs_answers(tmp_path):
    model, images = spread_model("DeiT", "confidence", num_images=16)
    export_onnx(model, tmp_path, exporter="torchscript")
    with ExitEngine(onnx_pipeline(tmp_path), max_batch=5) as engine:
        predictions = serve_in_random_order(engine, images, seed=2)
    assert_offline_answers(model, images, predictions)


def test_surviving_images_of_several_batches_run_together_deeper():
    model, images = spread_model("DeiT", "confidence")
    gated = GatedPipeline(segment_pipeline(model), gated=(1,))
    with ExitEngine(gated, max_batch=64, order="shallowest") as engine:
        first = engine.submit(images[:16])
        assert gated.entered.wait(10)  # stage 0 ran on the first request; its survivors hold stage 1
        second = engine.submit(images[16:])
        gated.release.set()
        predictions = [future.result(10) for future in first + second]
    assert_offline_answers(model, images, predictions)
    deeper = [rows for stage, rows in gated.log if stage == 2]
    survivors_of_both = int((torch.tensor([p.exit_layer for p in predictions]) > 2).sum())
    assert deeper == [survivors_of_both], gated.log  # one batch at stage 2 held the survivors of both requests


def test_an_image_leaving_at_the_first_exit_is_answered_before_a_deep_image_of_its_request_finishes():
    model, images = spread_model("DeiT", "confidence", num_images=2)
    with torch.no_grad():
        first_exit = model(images, early_exit=False).exit_logits[0].softmax(-1).amax(-1)
    easy, deep = first_exit.argsort(descending=True).tolist()
    # The more confident image leaves at the first exit; the other one at no exit (confidence never exceeds 1).
    model.config.threshold = [float(first_exit.mean())] + [1.0] * 5
    pipeline = segment_pipeline(model)
    watched: list = []
    done_when_final_started: list[tuple[bool, bool]] = []
    final_run = pipeline.runs[-1]

    def final(hidden: torch.Tensor):
        done_when_final_started.append(tuple(future.done() for future in watched))
        return final_run(hidden)

    pipeline.runs[-1] = final
    with ExitEngine(pipeline, max_batch=8, max_wait=0.05) as engine:
        watched.extend(engine.submit(images[[easy, deep]]))
        easy_answer, deep_answer = (future.result(10) for future in watched)
    assert (easy_answer.exit_layer, deep_answer.exit_layer) == (1, 6)
    assert done_when_final_started == [(True, False)]
    assert easy_answer.seconds < deep_answer.seconds


def test_a_full_engine_refuses_with_a_retry_time_and_admits_again_once_it_has_room():
    model, images = spread_model("DeiT", "confidence", num_images=4)
    gated = GatedPipeline(segment_pipeline(model), gated=(0,))
    with ExitEngine(gated, max_batch=8, max_queue=3) as engine:
        held = engine.submit(images[:2])
        assert gated.entered.wait(10)
        held += engine.submit(images[2:3])
        with pytest.raises(EngineFull, match="holds 3 of 3 images") as refused:
            engine.submit(images[3:4])
        assert refused.value.retry_after >= 1
        assert engine.in_flight == 3  # nothing of the refused request was admitted
        gated.release.set()
        assert all(future.result(10).exit_layer >= 1 for future in held)
        assert engine.submit(images[3:4])[0].result(10).exit_layer >= 1


def test_stop_answers_every_admitted_image_without_waiting_for_fuller_batches():
    model, images = spread_model("DeiT", "confidence", num_images=8)
    answers = Answers()
    engine = ExitEngine(segment_pipeline(model), max_batch=64, max_wait=60.0, observer=answers).start()
    futures = engine.submit(images[:5]) + engine.submit(images[5:])
    assert not any(future.done() for future in futures)  # a batch of 8 waits for more rows (max_wait 60 s)
    engine.stop(timeout=30)
    assert not engine.worker.is_alive()
    assert_offline_answers(model, images, [future.result(0) for future in futures])
    assert len(answers.predictions) == 8
    with pytest.raises(EngineStopped, match="shutting down"):
        engine.submit(images[:1])


def test_stop_without_draining_answers_waiting_images_with_an_error():
    model, images = spread_model("DeiT", "confidence", num_images=4)
    engine = ExitEngine(segment_pipeline(model), max_batch=64, max_wait=60.0).start()
    futures = engine.submit(images)
    engine.stop(drain=False, timeout=30)
    for future in futures:
        with pytest.raises(EngineStopped, match="before this image ran"):
            future.result(0)
    assert engine.in_flight == 0


def test_a_failing_batch_answers_its_images_with_the_error_and_the_engine_goes_on():
    model, images = spread_model("DeiT", "confidence", num_images=8)
    with torch.no_grad():
        layers = model(images).exit_layer
    failing = GatedPipeline(segment_pipeline(model), fail_stage=3)
    with ExitEngine(failing, max_batch=8) as engine:
        futures = engine.submit(images)
        for future, layer in zip(futures, layers.tolist()):
            if layer <= 3:
                assert future.result(10).exit_layer == layer
            else:
                with pytest.raises(RuntimeError, match="planted failure"):
                    future.result(10)
        assert engine.in_flight == 0


def test_submit_refuses_images_of_another_shape():
    model, _ = spread_model("DeiT", "confidence", num_images=2)
    with ExitEngine(segment_pipeline(model)) as engine:
        with pytest.raises(ValueError, match=r"float tensor \(n, 3, 16, 16\)"):
            engine.submit(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("function", [full_model_function, batch_exit_function])
def test_whole_batch_pipelines_answer_every_image_after_the_whole_model(function):
    model, images = spread_model("DeiT", "confidence", num_images=8)
    pipeline = WholePipeline(function(model), segment_pipeline(model).image_shape)
    with ExitEngine(pipeline, max_batch=8) as engine:
        predictions = [future.result(10) for future in engine.submit(images)]
    with torch.no_grad():
        every = model(images, early_exit=False)
        expected = every.final_logits if function is full_model_function else model(images).logits
    assert [p.label for p in predictions] == expected.argmax(-1).tolist()
    assert len({p.seconds for p in predictions}) == 1  # one answer time for the whole batch


def test_policy_runs_full_or_due_queues_by_order_and_otherwise_waits():
    def queues(*rows_and_ages):
        return [QueueView(rows, 10.0 - age, 10.0 - age) for rows, age in rows_and_ages]

    # stage 0 is full, stage 2 due (waited 0.02 >= 0.01), stage 1 neither: the order picks among 0 and 2
    waiting = queues((8, 0.0), (1, 0.0), (1, 0.02))
    assert choose_stage(waiting, 10.0, 8, 0.01, "deepest") == (2, None)
    assert choose_stage(waiting, 10.0, 8, 0.01, "shallowest") == (0, None)
    assert choose_stage(waiting, 10.0, 8, 0.01) == (0, None)  # the default, fullest: 8 rows against 1
    # a row past max_delay puts its queue first whatever the order
    assert choose_stage(waiting, 10.0, 8, 0.01, "shallowest", max_delay=0.015) == (2, None)
    # oldest: the queue whose oldest row entered the engine first
    ages = [QueueView(8, 10.0, 9.0), QueueView(8, 10.0, 8.0), QueueView(8, 10.0, 9.5)]
    assert choose_stage(ages, 10.0, 8, 0.01, "oldest") == (1, None)
    # fullest: the most rows, counted up to max_batch, the deepest among equals
    assert choose_stage(queues((5, 0.0), (7, 0.0), (3, 0.0)), 10.0, 8, 0.0, "fullest") == (1, None)
    assert choose_stage(queues((20, 0.0), (8, 0.0), (3, 0.0)), 10.0, 8, 0.0, "fullest") == (1, None)
    assert choose_stage(queues((1, 0.0), (0, 0.0), (1, 0.0)), 10.0, 8, 0.0, "fullest") == (2, None)
    # nothing runnable: sleep until the oldest row falls due
    stage, wake = choose_stage(queues((2, 0.004), (1, 0.001)), 10.0, 8, 0.01)
    assert stage is None and wake == pytest.approx(0.006)
    assert choose_stage(queues((0, 0.0), (0, 0.0)), 10.0, 8, 0.01) == (None, None)
