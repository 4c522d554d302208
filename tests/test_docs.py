"""The documentation cannot rot: every shell command in README.md and docs/*.md is checked against the code (the
entry point exists and takes the arguments shown), every Python block compiles, and every relative link leads to a
file. docs/development.md describes the rules a command in the docs follows."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from utils.arguments import parse_arguments

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
# Launchers that take `run_classification.py` arguments and print their plan and command with DRY_RUN=1.
STAGE_LAUNCHERS = re.compile(r"scripts/(train_\w+|eval_highway_\w+)\.sh$")
# Programs outside this repository that the docs may name; only their presence in this list is checked.
EXTERNAL_PROGRAMS = {"sbatch", "wandb", "tensorboard", "git", "cd"}


def blocks(language: str) -> list[tuple[str, str]]:
    """(page, text) of every fenced block in `language`."""
    return [(page.relative_to(ROOT).as_posix(), match.group(2)) for page in PAGES
            for match in BLOCK.finditer(page.read_text(encoding="utf-8")) if match.group(1) == language]


def shell_commands() -> list[tuple[str, list[str]]]:
    """(page, words) of every command in the docs' bash blocks: comments dropped, continued lines joined, `&&` and
    `;` chains split."""
    commands = []
    for page, text in blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", text)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            command: list[str] = []
            for word in [*words, "&&"]:
                if word in ("&&", ";"):
                    if command:
                        commands.append((page, command))
                    command = []
                else:
                    command.append(word)
    return commands


def split_environment(words: list[str]) -> tuple[dict[str, str], list[str]]:
    environment = {}
    while words and ASSIGNMENT.match(words[0]):
        name, _, value = words[0].partition("=")
        environment[name] = value
        words = words[1:]
    return environment, words


def check_module(module: str, arguments: list[str]) -> None:
    """A project module must parse the arguments with its `build_parser()`; another one must be importable."""
    if module.split(".")[0] not in ("utils", "benchmarks", "models"):
        assert importlib.util.find_spec(module) is not None, f"no module {module}"
        return
    build_parser = getattr(importlib.import_module(module if module != "utils.export" else "utils.export.__main__"),
                           "build_parser", None)
    assert build_parser is not None, f"{module} has no build_parser()"
    try:
        build_parser().parse_args(arguments)
    except SystemExit as error:
        raise AssertionError(f"python -m {module} {' '.join(arguments)}: rejected (exit {error.code})") from error


def check_run_arguments(arguments: list[str]) -> None:
    """run_classification.py's parser accepts the arguments (preset paths from the repository root)."""
    parse_arguments([str(ROOT / word) if word.endswith((".yaml", ".json")) and (ROOT / word).exists() else word
                     for word in arguments])


def check_launcher(script: str, environment: dict[str, str], arguments: list[str]) -> None:
    """A stage launcher, run with DRY_RUN=1 and the documented variables, plans a command the parser accepts."""
    env = {key: value for key, value in os.environ.items() if key not in ("OUTPUT_DIR", "BACKBONE", "METHOD")}
    env.update({"HF_HUB_OFFLINE": "1", "DRY_RUN": "1", "PYTHON": sys.executable, "NUM_GPUS": "0", **environment})
    if int(env.get("NNODES", "1")) > 1:
        env.setdefault("GPUS_PER_NODE", "1")
    finished = subprocess.run(["bash", str(ROOT / script), *arguments], env=env, capture_output=True, text=True,
                              timeout=120, cwd=ROOT)
    assert finished.returncode == 0, f"{script}: {finished.stderr[-2000:]}"
    planned = shlex.split(finished.stdout.splitlines()[-1])
    run = next(index for index, word in enumerate(planned) if word.endswith("run_classification.py"))
    parse_arguments(planned[run + 1:])


def check_command(words: list[str]) -> None:
    environment, words = split_environment(words)
    program, arguments = words[0], words[1:]
    if program in ("python", "python3", ".venv/bin/python") and arguments[:1] == ["-m"]:
        check_module(arguments[1], arguments[2:])
    elif program in ("python", "python3", ".venv/bin/python") and arguments[0] == "run_classification.py":
        check_run_arguments(arguments[1:])
    elif program == ".venv/bin/pip":
        assert arguments[:2] == ["install", "-r"] and (ROOT / arguments[2]).is_file(), words
    elif program in ("bash", "source"):
        script = arguments[0]
        assert (ROOT / script).is_file(), f"no file {script}"
        assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0, f"{script} does not parse"
        if STAGE_LAUNCHERS.search(script):
            check_launcher(script, environment, arguments[1:])
    else:
        assert program in EXTERNAL_PROGRAMS, f"unknown program {program!r}: the docs check does not know it"
        if program == "sbatch":
            script, launcher = [word for word in arguments if not word.startswith("-")][:2]
            assert (ROOT / script).is_file() and (ROOT / launcher).is_file(), words


COMMANDS = shell_commands()


def test_the_docs_hold_commands_to_check() -> None:
    pages = {page for page, _ in COMMANDS}
    assert "README.md" in pages and len(COMMANDS) >= 30


@pytest.mark.parametrize("page, words", COMMANDS, ids=[f"{page}:{' '.join(words)[:60]}" for page, words in COMMANDS])
def test_every_documented_command_runs_against_the_code(page: str, words: list[str]) -> None:
    check_command(words)


def test_the_check_catches_a_wrong_flag_and_a_missing_script() -> None:
    with pytest.raises(ValueError, match="not used by the HfArgumentParser"):
        check_command(["python", "run_classification.py", "configs/paper/eval.yaml", "--no_such_flag", "1",
                       "--model_name_or_path", "x", "--dataset_name", "digits", "--output_dir", "x"])
    with pytest.raises(AssertionError, match="no file"):
        check_command(["bash", "scripts/no_such_launcher.sh"])
    with pytest.raises(AssertionError, match="rejected"):
        check_command(["python", "-m", "utils.export", "only_one_argument"])


@pytest.mark.parametrize("page, text", blocks("python"), ids=[page for page, _ in blocks("python")])
def test_every_python_block_compiles(page: str, text: str) -> None:
    compile(text, page, "exec")


def test_every_relative_link_leads_to_a_file() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
