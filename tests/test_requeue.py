"""Jobs that survive a kill, a requeue or a time limit: a checkpoint appears only once complete, so a process killed
while writing one resumes from the one before and ends as an uninterrupted run (base, stage-1 and stage-2
presets); SIGUSR1/SIGTERM stop training at a step end with a checkpoint and the requeue exit code, in one process
and, through the launcher, in two processes that agree on the step; the same command then resumes and finishes."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pipeline_helpers import read_json, run_args, stage1_args, write_tiny_config
from safetensors.torch import load_file
from test_multi_node import finish, start
from transformers import Trainer, TrainerCallback

import run_classification
from utils.training import requeue
from utils.training.requeue import REQUEUE_EXIT_CODE, StopOnSignal

pytestmark = pytest.mark.launches

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "digits"
SHORT = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--max_train_samples", "32",
         "--per_device_train_batch_size", "8", "--warmup_steps", "0", "--do_eval", "False", "--report_to", "none",
         "--disable_tqdm", "True", "--dataloader_num_workers", "0"]


def same_weights(first: Path, second: Path) -> bool:
    one, other = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    return one.keys() == other.keys() and all(torch.equal(one[name], other[name]) for name in one)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base model and a stage-1 model with three LGViT exits, trained briefly."""
    root = tmp_path_factory.mktemp("requeue_models")
    run_classification.main(run_args(root / "base", config_name=write_tiny_config(root), do_eval=False))
    run_classification.main(stage1_args(root / "stage1", root / "base", do_eval=False))
    return {"root": root, "base": root / "base", "stage1": root / "stage1"}


def preset_command(stage: str, output_dir: Path, models: dict[str, Path]) -> list[str]:
    """A short run of a digits preset, as its launcher would start it."""
    model = {"base": ["--config_name", write_tiny_config(models["root"])],
             "stage1": ["--model_name_or_path", str(models["base"]), "--highway_type", "LGViT",
                        "--num_early_exits", "3", "--train_strategy", "alternating_weighted"],
             "stage2": ["--model_name_or_path", str(models["stage1"])]}[stage]
    return [str(PRESETS / f"{stage}.yaml"), *model, *SHORT, "--output_dir", str(output_dir)]


def killed_while_saving(command: list[str], step: int) -> int:
    """Run `command` in a forked process that SIGKILLs itself while writing the checkpoint of `step` (the weights
    and optimizer written, its RNG state and Trainer state not yet); returns the process's exit code."""
    def run() -> None:
        original = Trainer._save_rng_state

        def save_rng_state(self, output_dir):
            if self.state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)
            original(self, output_dir)

        Trainer._save_rng_state = save_rng_state
        run_classification.main(command)

    process = multiprocessing.get_context("fork").Process(target=run)
    process.start()
    process.join(timeout=300)
    return process.exitcode


@pytest.mark.parametrize("stage", ["base", "stage1", "stage2"])
def test_a_job_killed_while_saving_resumes_from_the_checkpoint_before(
        models: dict[str, Path], tmp_path: Path, stage: str, caplog: pytest.LogCaptureFixture) -> None:
    """The base and stage-2 presets start a rerun over (--overwrite_output_dir true), stage 1's (digits) too: the
    killed run is resumed all the same, and ends with the weights of an uninterrupted run."""
    run_classification.main(preset_command(stage, tmp_path / "straight", models))
    killed = tmp_path / "killed"
    assert killed_while_saving(preset_command(stage, killed, models), step=4) == -signal.SIGKILL
    assert sorted(path.name for path in killed.iterdir() if "checkpoint" in path.name) == [
        "checkpoint-2", "partial-checkpoint-4"]
    assert not (killed / "partial-checkpoint-4" / "checkpoint-4" / "trainer_state.json").exists()

    run_classification.main(preset_command(stage, killed, models))  # the same command again
    assert f"Resuming the interrupted run in {killed} from {killed / 'checkpoint-2'}" in caplog.text
    assert "left unfinished" in caplog.text and "partial-checkpoint-4" in caplog.text
    assert read_json(killed / "checkpoint-4" / "trainer_state.json")["global_step"] == 4
    assert not (killed / "partial-checkpoint-4").exists()
    assert same_weights(killed, tmp_path / "straight")


class SignalAt(TrainerCallback):
    """Sends this process a signal at the beginning of a step (1-based)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), self.signum)


def test_a_signal_saves_a_checkpoint_exits_for_a_requeue_and_the_same_command_finishes(
        models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGUSR1 during step 2 of 6: the checkpoint of step 2 is written and the process exits with the requeue code,
    with SIGUSR1's handler given back; run again, it resumes and ends as an uninterrupted run."""
    settings = {"max_steps": 6, "save_strategy": "steps", "save_steps": 4, "max_train_samples": 64,
                "do_eval": False}
    run_classification.main(stage1_args(tmp_path / "straight", models["base"], **settings))
    stopped = tmp_path / "stopped"
    original_init = run_classification.ExitTrainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(SignalAt(2, signal.SIGUSR1))

    with monkeypatch.context() as patch:
        patch.setattr(run_classification.ExitTrainer, "__init__", init)
        with pytest.raises(SystemExit) as exit_info:
            run_classification.main(stage1_args(stopped, models["base"], **settings))
    assert exit_info.value.code == REQUEUE_EXIT_CODE
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert sorted(path.name for path in stopped.glob("*checkpoint-*")) == ["checkpoint-2"]
    assert read_json(stopped / "checkpoint-2" / "trainer_state.json")["global_step"] == 2
    assert not (stopped / "model.safetensors").exists()  # no final save after the stop

    run_classification.main(stage1_args(stopped, models["base"], **settings))
    assert read_json(stopped / "trainer_state.json")["global_step"] == 6
    assert same_weights(stopped, tmp_path / "straight")


def test_processes_agree_on_the_stop_step_through_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store protocol, with two processes a step apart: rank 1 already ended step 6 when rank 0, at step 5,
    gets the signal; both stop after step 7, the first step end neither has passed. A rank that never got the
    signal learns it from the store."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, 1, True, timeout=datetime.timedelta(seconds=10))
    monkeypatch.setattr(requeue, "_shared_store", lambda args: store)
    ranks = [StopOnSignal(), StopOnSignal()]
    arguments = [SimpleNamespace(process_index=rank, world_size=2) for rank in (0, 1)]
    state = SimpleNamespace(global_step=0, max_steps=100)

    def step_end(rank: int, step: int) -> SimpleNamespace:
        control = SimpleNamespace(should_save=False, should_training_stop=False)
        state.global_step = step
        ranks[rank].on_step_end(arguments[rank], state, control)
        return control

    for callback in ranks:
        callback._runs = 1
    for step in range(1, 6):
        assert not step_end(0, step).should_training_stop
        assert not step_end(1, step).should_training_stop
    assert not step_end(1, 6).should_training_stop
    ranks[0].received = signal.SIGTERM
    assert not step_end(0, 5).should_training_stop
    assert not step_end(0, 6).should_training_stop
    stops = [step_end(0, 7), step_end(1, 7)]
    assert all(control.should_save and control.should_training_stop for control in stops)
    assert [callback.stop_step for callback in ranks] == [7, 7] and all(callback.stopped for callback in ranks)


def test_the_launcher_stops_two_processes_at_one_step_on_sigusr1_and_the_same_command_resumes(
        models: dict[str, Path], tmp_path: Path) -> None:
    """Two gloo processes under torchrun; SIGUSR1 to the launcher once training runs: the launcher passes SIGTERM to
    torchrun, which passes it to both workers; they stop after the same step with one complete checkpoint (both
    RNG states) and the launcher exits with the requeue code. The same command then resumes and finishes."""
    output = tmp_path / "run"
    args = ["--max_steps", "60", "--save_strategy", "steps", "--save_steps", "200", "--max_train_samples", "64",
            "--eval_strategy", "no", "--do_eval", "False", "--disable_tqdm", "True", "--logging_steps", "1",
            "--load_best_model_at_end", "False"]
    variables = dict(GPUS_PER_NODE="2", HIGHWAY_TYPE="linear", NUM_EARLY_EXITS="3", POSITION_EXITS="[1,2,3]",
                     MODEL_NAME_OR_PATH=str(models["base"]), OUTPUT_DIR=str(output), PYTHONUNBUFFERED="1")
    log = tmp_path / "stopped.log"
    launcher = start("train_baseline_deit.sh", log, *args, **variables)
    deadline = time.monotonic() + 300
    while "'loss'" not in log.read_text():  # training has begun
        assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    os.kill(launcher.pid, signal.SIGUSR1)
    assert launcher.wait(timeout=120) == REQUEUE_EXIT_CODE, log.read_text()[-3000:]
    text = log.read_text()
    stops = {int(step) for step in re.findall(r"Stopping after step (\d+) on a signal", text)}
    assert len(stops) == 1 and len(re.findall(r"Stopping after step \d+ on a signal", text)) == 2, text[-3000:]
    step = stops.pop()
    assert sorted(path.name for path in output.glob("*checkpoint-*")) == [f"checkpoint-{step}"]
    checkpoint = output / f"checkpoint-{step}"
    assert read_json(checkpoint / "trainer_state.json")["global_step"] == step
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()

    resumed = finish(start("train_baseline_deit.sh", tmp_path / "resumed.log", *args, **variables),
                     tmp_path / "resumed.log")
    assert f"from {checkpoint}" in resumed
    assert read_json(output / "trainer_state.json")["global_step"] == 60
