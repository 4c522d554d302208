"""Runs beyond one process, on CPU with gloo: two "nodes" on localhost (two launchers with NNODES/NODE_RANK/MASTER_*)
train and evaluate exactly as one two-process run of the same global batch; a worker killed mid-run under
MAX_RESTARTS restarts the group, which resumes from its last checkpoint (even in a stage whose presets start over)
and ends with the weights and log of an uninterrupted run; and the SLURM example starts one launcher per node with
SLURM's variables, and requeues a job whose launchers stopped with a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pipeline_helpers import median_first_exit_confidence, read_json, run_args, write_tiny_config
from safetensors.torch import load_file

import run_classification
from utils.training.requeue import REQUEUE_EXIT_CODE

pytestmark = pytest.mark.launches

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--max_train_samples", "64", "--max_eval_samples", "30", "--eval_strategy", "no", "--disable_tqdm", "True",
         "--load_best_model_at_end", "False", "--learning_rate", "1e-3", "--logging_steps", "1"]
STAGE1 = {"HIGHWAY_TYPE": "linear", "NUM_EARLY_EXITS": "3", "POSITION_EXITS": "[1,2,3]"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(**variables: str) -> dict[str, str]:
    cleared = ("NNODES", "NODE_RANK", "GPUS_PER_NODE", "NUM_GPUS", "MASTER_ADDR", "MASTER_PORT", "MAX_RESTARTS",
               "OUTPUT_DIR", "BACKBONE", "METHOD")
    env = {key: value for key, value in os.environ.items() if key not in cleared}
    # gloo on the loopback interface: the "nodes" are processes of this machine.
    return {**env, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "REPORT_TO": "none",
            "DATASET": "digits", "PYTHON": sys.executable, "GLOBAL_BATCH_SIZE": "16", "BATCH_SIZE": "8",
            "GLOO_SOCKET_IFNAME": "lo", **variables}


def start(script: str, log: Path, *args: str, **variables: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(ROOT / "scripts" / script), *args], env=environment(**variables),
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    """The launcher's log once it succeeded; a launcher that hangs (e.g. processes waiting on each other) is killed
    with all its processes, and its log shown."""
    try:
        status = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"hung for {timeout} s:\n{log.read_text()[-4000:]}") from None
    assert status == 0, log.read_text()[-4000:]
    return log.read_text()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multi_node_base")
    process = start("train_base_deit.sh", root / "base.log", *SHORT, "--max_steps", "12", "--save_strategy", "no",
                    CONFIG_NAME=write_tiny_config(root), OUTPUT_DIR=str(root / "base"))
    finish(process, root / "base.log")
    return root / "base"


def two_nodes(script: str, output_dir: Path, *args: str, **variables: str) -> list[str]:
    """Run `script` as two nodes on localhost (two launchers, one process each); returns their logs."""
    nodes = {"NNODES": "2", "GPUS_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    logs = [output_dir.parent / f"{output_dir.name}_node{rank}.log" for rank in (0, 1)]
    launchers = [start(script, log, *args, **variables, **nodes, NODE_RANK=str(rank), OUTPUT_DIR=str(output_dir))
                 for rank, log in enumerate(logs)]
    return [finish(process, log) for process, log in zip(launchers, logs)]


def test_two_nodes_train_and_evaluate_as_one_two_process_run(base_model: Path, tmp_path: Path) -> None:
    args = [*SHORT, "--max_steps", "4", "--save_strategy", "no", "--do_eval", "False"]
    logs = two_nodes("train_baseline_deit.sh", tmp_path / "nodes", *args, **STAGE1,
                     MODEL_NAME_OR_PATH=str(base_model))
    assert all("=== processes: 2 node(s) x 1 process(es) (torchrun) ===" in log for log in logs)
    finish(start("train_baseline_deit.sh", tmp_path / "one.log", *args, **STAGE1, GPUS_PER_NODE="2",
                 MODEL_NAME_OR_PATH=str(base_model), OUTPUT_DIR=str(tmp_path / "one")), tmp_path / "one.log")
    two_nodes_weights, one_node_weights = (load_file(tmp_path / run / "model.safetensors") for run in ("nodes", "one"))
    assert two_nodes_weights.keys() == one_node_weights.keys()
    assert all(torch.equal(two_nodes_weights[name], one_node_weights[name]) for name in one_node_weights)

    # Evaluation on the two nodes, at a threshold that sends about half the images out at the first exit, against
    # the two-process run's model evaluated here.
    threshold = str(median_first_exit_confidence(tmp_path / "nodes", 30))
    two_nodes("eval_highway_deit.sh", tmp_path / "nodes_eval", "--max_eval_samples", "30", "--disable_tqdm", "True",
              "--sweep", "False", MODEL_NAME_OR_PATH=str(tmp_path / "nodes"), THRESHOLD=threshold)
    reference = run_classification.main(run_args(tmp_path / "one_eval", model_name_or_path=str(tmp_path / "one"),
                                                 do_train=False, max_eval_samples=30, threshold=threshold))
    evaluated = read_json(tmp_path / "nodes_eval" / "eval_results.json")
    counts = [{key: value for key, value in result.items() if key.startswith("eval_counts_exit_layer")}
              for result in (evaluated, reference)]
    assert counts[0] == counts[1] and sum(counts[0].values()) == 30
    assert sum(1 for value in counts[0].values() if value) >= 2, "the exits should spread over several layers"
    assert evaluated["eval_accuracy"] == reference["eval_accuracy"]


def worker_processes(output_dir: Path) -> list[int]:
    """Process ids of the training workers of a run (not torchrun's agent), found by their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (b"run_classification.py" in b" ".join(words) and str(output_dir).encode() in words
                and not any(b"torch.distributed.run" in word for word in words)):
            found.append(int(entry.name))
    return found


RESTARTED_RUN = [*SHORT, "--max_steps", "16", "--save_strategy", "steps", "--save_steps", "4", "--save_total_limit",
                 "10"]


@pytest.fixture(scope="module")
def uninterrupted_run(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run that the restarted ones must end as: base fine-tuning on two processes of one node, never killed."""
    root = tmp_path_factory.mktemp("uninterrupted")
    finish(start("train_base_deit.sh", root / "clean.log", *RESTARTED_RUN, MAX_RESTARTS="1",
                 MODEL_NAME_OR_PATH=str(base_model), GPUS_PER_NODE="2", OUTPUT_DIR=str(root / "clean")),
           root / "clean.log")
    return root / "clean"


@pytest.mark.parametrize("nodes", [1, 2], ids=["one_node", "two_nodes"])
def test_a_killed_worker_restarts_the_group_which_resumes_and_ends_as_an_uninterrupted_run(
        base_model: Path, uninterrupted_run: Path, tmp_path: Path, nodes: int) -> None:
    """Base fine-tuning (its presets start over: --overwrite_output_dir True) on two processes, on one node or on two
    (then the c10d rendezvous), checkpoints every 4 of 16 steps; one worker is SIGKILLed once the first checkpoint
    is complete. On two nodes the other node's agent restarts its process without counting a restart: the group
    still agrees that it is one."""
    args = RESTARTED_RUN
    variables = dict(MAX_RESTARTS="1", MODEL_NAME_OR_PATH=str(base_model))
    faulty = tmp_path / "faulty"
    if nodes == 1:
        launchers = [start("train_base_deit.sh", tmp_path / "faulty.log", *args, **variables, GPUS_PER_NODE="2",
                           OUTPUT_DIR=str(faulty))]
    else:
        cluster = dict(NNODES="2", GPUS_PER_NODE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                       RDZV_ID=tmp_path.name)
        launchers = [start("train_base_deit.sh", tmp_path / f"faulty{rank}.log", *args, **variables, **cluster,
                           NODE_RANK=str(rank), OUTPUT_DIR=str(faulty)) for rank in (0, 1)]
    logs = sorted(tmp_path.glob("faulty*.log"))
    deadline = time.monotonic() + 300
    while not (faulty / "checkpoint-4" / "trainer_state.json").is_file():
        assert all(process.poll() is None for process in launchers) and time.monotonic() < deadline, \
            logs[0].read_text()[-3000:]
        time.sleep(0.01)
    workers = worker_processes(faulty)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    log = "".join(finish(process, path) for process, path in zip(launchers, logs))
    assert "exitcode: -9" in log
    assert "Restart 1 of this run after a failure: resuming from" in log and str(faulty / "checkpoint-") in log

    resumed, uninterrupted = load_file(faulty / "model.safetensors"), load_file(uninterrupted_run / "model.safetensors")
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)
    history = [json.loads((run / "trainer_state.json").read_text())["log_history"]
               for run in (faulty, uninterrupted_run)]
    losses = [[(entry["step"], entry["loss"]) for entry in run if "loss" in entry] for run in history]
    assert losses[0] == losses[1] and [step for step, _ in losses[0]] == list(range(1, 17))
    # What was written before the fault is still there.
    assert (faulty / "checkpoint-4" / "model.safetensors").is_file()


def stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def slurm_stand_ins(folder: Path) -> dict[str, str]:
    """Stand-ins for `scontrol` (the node list; every call logged) and `srun` (its options logged, then the task
    once per node, in turn, with that node's SLURM_NODEID, stopping at a failing one with its status), and SLURM's
    variables for a 2-node job 4242 of 4 GPUs and 64 CPUs per node."""
    stub(folder, "scontrol", f'echo "$*" >> {folder}/scontrol.log\nprintf "gpu-node-17\\ngpu-node-18\\n"\n')
    stub(folder, "srun", f'echo "$*" >> {folder}/srun.log\nwhile [[ "$1" == --* ]]; do shift; done\n'
                         'for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node "$@" || exit; done\n')
    env = environment(PATH=f"{folder}:{os.environ['PATH']}", SLURM_NNODES="2", SLURM_JOB_ID="4242",
                      SLURM_JOB_NODELIST="gpu-node-[17-18]", SLURM_GPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="64")
    del env["GLOBAL_BATCH_SIZE"], env["BATCH_SIZE"]  # the presets' 192 and 64
    return env


def test_the_slurm_example_starts_one_launcher_per_node_from_slurms_variables(tmp_path: Path) -> None:
    """`sbatch scripts/slurm/train.sbatch <launcher>` as SLURM runs it, with stand-ins for `scontrol` and `srun`; the
    launchers only print. srun passes the task's CPUs on, and the rendezvous port comes from the job id."""
    env = {**slurm_stand_ins(tmp_path), "DRY_RUN": "1"}
    finished = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "train.sbatch"),
                               "scripts/train_baseline_deit.sh", "--max_steps", "1"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    commands = [line.split() for line in finished.stdout.splitlines() if "torch.distributed.run" in line]
    assert len(commands) == 2
    for rank, command in enumerate(commands):
        for flag in ("--nnodes=2", f"--node_rank={rank}", "--master_addr=gpu-node-17", "--master_port=19242",
                     "--nproc_per_node=4"):
            assert flag in command, (flag, command)
    assert "global batch 192 = 8 process(es) x 24 per device" in finished.stderr
    assert (tmp_path / "srun.log").read_text().split()[:3] == ["--ntasks=2", "--ntasks-per-node=1",
                                                               "--cpus-per-task=64"]
    assert "requeue" not in (tmp_path / "scontrol.log").read_text()
    header = (ROOT / "scripts" / "slurm" / "train.sbatch").read_text()
    assert "#SBATCH --signal=USR1@300\n" in header and "#SBATCH --requeue\n" in header


def test_the_slurm_example_requeues_a_job_whose_launcher_stopped_with_a_checkpoint(tmp_path: Path) -> None:
    """A launcher that exits with the requeue code (training stopped on SIGUSR1 with a checkpoint) has the job
    requeued; one that fails otherwise does not."""
    launcher = tmp_path / "launcher.sh"
    launcher.write_text('exit "$LAUNCHER_STATUS"\n')
    sbatch = ["bash", str(ROOT / "scripts" / "slurm" / "train.sbatch"), str(launcher)]
    for status, requeued in ((REQUEUE_EXIT_CODE, True), (1, False)):
        (tmp_path / "scontrol.log").unlink(missing_ok=True)
        env = {**slurm_stand_ins(tmp_path), "LAUNCHER_STATUS": str(status)}
        finished = subprocess.run(sbatch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert finished.returncode == status, finished.stderr
        assert ("requeue 4242" in (tmp_path / "scontrol.log").read_text().splitlines()) == requeued
