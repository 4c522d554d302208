"""The documentation cannot rot. Every shell command in README.md and docs/*.md is checked against the code (the
entry point exists and takes the arguments shown), every Python block compiles, and four rules hold:

1. every relative link, section anchor, quoted section name and repository path resolves;
2. every table, output block or paragraph giving measured numbers names the command that made them (in itself, in
   the paragraph just before it, or just after it, or continuing a measured item that does), and the command passes
   the same check as the commands of the bash blocks;
3. every `--flag` and environment variable a page names is defined: a flag by a parser of the project (the one of
   the module the paragraph names, when it names one) or a program the docs launch, a variable by a launcher or
   the code that reads it;
4. numbers the README and the docs repeat agree with each other, or with the code they describe (`REPEATED`).

docs/development.md describes these rules."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
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
        if module == "pytest":
            missing = [word for word in arguments if word.startswith("tests")
                       and not (ROOT / word.split("::")[0]).exists()]
            assert not missing, f"pytest: no test file {missing}"
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


# ---- The page's parts: sections, and within them items (paragraphs, list items, tables, fenced blocks) ----

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
LIST_ITEM = re.compile(r"^\s*(?:[-*]|\d+\.)\s")
CODE = re.compile(r"`([^`]+)`")  # a code span may run over a line break


@dataclass
class Item:
    """A paragraph, list item, table or fenced block of a page, with its section's heading."""

    page: str
    line: int
    section: str
    kind: str  # paragraph, table, block
    text: str
    language: str = ""


def page_items(page: str, text: str) -> list[Item]:
    """The items of a page, in order (headings start sections and are not items)."""
    found: list[Item] = []
    section, current, fence = "", None, None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith("```"):
                found.append(fence)
                fence = None
            else:
                fence.text += line + "\n"
            continue
        kind = "table" if stripped.startswith("|") else "paragraph"
        if stripped.startswith("```"):
            current, fence = None, Item(page, number, section, "block", "", stripped[3:].strip())
        elif HEADING.match(line):
            current, section = None, HEADING.match(line).group(2)
        elif not stripped:
            current = None
        elif current is None or current.kind != kind or (kind == "paragraph" and LIST_ITEM.match(line)):
            current = Item(page, number, section, kind, stripped)
            found.append(current)
        else:
            current.text += "\n" + stripped
    return found


def page_text(page: str) -> str:
    return (ROOT / page).read_text(encoding="utf-8")


PAGE_NAMES = [page.relative_to(ROOT).as_posix() for page in PAGES]
ITEMS = {page: page_items(page, page_text(page)) for page in PAGE_NAMES}


# ---- Rule 1: links, anchors, quoted section names and repository paths resolve ----

LINK = re.compile(r"\]\(([^)\s]*)\)")
# "Title" below / above, section "Title", under "Title", see "Title": a heading of the same page.
SECTION_NAME = re.compile(r'(?:section|sections|under|see)\s+"([^"]+)"|"([^"]+)"\s+(?:below|above)')
# A path in this repository's own folders, as the docs cite code and tests.
REPOSITORY_PATH = re.compile(r"^(?:models|utils|tests|scripts|configs|benchmarks|docs|\.ci)/[\w./{},*-]*$")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(text: str) -> list[str]:
    """The headings of a page, outside fenced blocks."""
    return [match.group(2) for item_text in re.split(r"^```.*?^```", text, flags=re.S | re.M)
            for match in map(HEADING.match, item_text.splitlines()) if match]


def expand_braces(path: str) -> list[str]:
    match = re.search(r"\{([^}]*)\}", path)
    if match is None:
        return [path]
    return [expanded for choice in match.group(1).split(",")
            for expanded in expand_braces(path[:match.start()] + choice + path[match.end():])]


def unresolved_references(page: str, text: str) -> list[str]:
    """Links, anchors, quoted section names and repository paths of `text` (a page at `page`) that lead nowhere."""
    broken = []
    folder = (ROOT / page).parent
    for target in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        linked = (folder / path) if path else ROOT / page
        if not linked.exists():
            broken.append(f"{page}: link to {target}: no file")
        elif anchor and linked.suffix == ".md" and anchor not in {slug(h) for h in headings(linked.read_text())}:
            broken.append(f"{page}: link to {target}: no heading with that anchor")
    names = set(headings(text))
    for match in SECTION_NAME.finditer(CODE.sub(" ", text)):
        name = " ".join((match.group(1) or match.group(2)).split())
        if name not in names and name[:1].isupper():
            broken.append(f'{page}: section "{name}": no such heading on the page')
    for code in CODE.findall(text):
        if not code.split():
            continue
        word = code.split()[0].split(":")[0].rstrip(".,")
        if REPOSITORY_PATH.match(word) and not any(glob_exists(path) for path in expand_braces(word)):
            broken.append(f"{page}: `{word}`: no such file or folder")
    return broken


def glob_exists(path: str) -> bool:
    return any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()


def test_every_link_anchor_section_name_and_path_resolves() -> None:
    broken = [problem for page in PAGE_NAMES for problem in unresolved_references(page, page_text(page))]
    assert not broken, "\n".join(broken)


# ---- Rule 2: measured numbers name the command that made them ----

MEASURED = re.compile(
    r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:-\d[\d,]*(?:\.\d+)?)?\s?"
    r"(?:images/s|images per second|ms|s|seconds|minutes|GB|GiB|MB)(?![\w/])|(?<![\w.])\d{1,3}\.\d{2,4}(?![\w.])")
# Numbers that are not measurements: versions, settings and formulas (`= 0.3`, `> 0.8`), deadlines ("300 s before
# the time limit"). Settings in code spans (`0.01`) are never read as measurements.
NOT_MEASURED = re.compile(r"(?:SLURM|transformers|torch|Python|CUDA)\s+\d+(?:\.\d+)+|[=<>]\s*\d+(?:\.\d+)?"
                          r"|\d+ s\**\s+before")
COMMAND_START = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=(?:\"[^\"]*\"|\S*)\s+)*(?:python3?|\.venv/bin/python|bash|sbatch)\s")


def item_commands(item: Item) -> list[list[str]]:
    """The commands an item names: its bash block's, or its inline code that starts like a command, at least a
    program and what it runs (placeholders such as `<name>` or `...` do not count)."""
    if item.kind == "block":
        return [words for page, words in shell_commands_of(item.text)] if item.language == "bash" else []
    return [shlex.split(code) for code in CODE.findall(item.text)
            if COMMAND_START.match(code) and "<" not in code and "..." not in code and code.split()[-1] != "-m"]


def shell_commands_of(text: str) -> list[tuple[str, list[str]]]:
    commands = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        command: list[str] = []
        for word in [*shlex.split(line, comments=True), "&&"]:
            if word in ("&&", ";"):
                if command:
                    commands.append(("", command))
                command = []
            else:
                command.append(word)
    return commands


def gives_measurements(item: Item) -> bool:
    if item.kind == "block" and item.language not in ("", "text"):
        return False
    text = NOT_MEASURED.sub(" ", CODE.sub(" ", item.text) if item.kind != "block" else item.text)
    return MEASURED.search(text) is not None


def unsourced_measurements(items: list[Item]) -> list[Item]:
    """Measured items with no command in themselves, in the item just before or after (same section), or in the
    measured item they continue."""
    missing, sourced = [], set()
    for index, item in enumerate(items):
        if not gives_measurements(item):
            continue
        neighbours = [other for other in items[max(0, index - 1):index + 2] if other.section == item.section]
        continued = index > 0 and items[index - 1].section == item.section and index - 1 in sourced
        if any(item_commands(other) for other in neighbours) or continued:
            sourced.add(index)
        else:
            missing.append(item)
    return missing


def test_every_measured_number_names_its_command() -> None:
    missing = [f"{item.page}:{item.line}: {item.text[:100]!r}" for page in PAGE_NAMES
               for item in unsourced_measurements(ITEMS[page])]
    assert not missing, "measured numbers without the command that made them:\n" + "\n".join(missing)


INLINE_COMMANDS = sorted({(page, tuple(words)) for page in PAGE_NAMES for item in ITEMS[page] if item.kind != "block"
                          for words in item_commands(item)})


@pytest.mark.parametrize("page, words", INLINE_COMMANDS,
                         ids=[f"{page}:{' '.join(words)[:60]}" for page, words in INLINE_COMMANDS])
def test_every_command_named_in_a_paragraph_runs_against_the_code(page: str, words: tuple[str, ...]) -> None:
    """A command in a paragraph passes the bash blocks' check; one that only names a module (`python -m x.y`, or its
    usage with `[optional]` parts) must name one that exists, with a build_parser() if it is the project's."""
    if words[1:2] == ("-m",) and (len(words) == 3 or any("[" in word for word in words)):
        module = words[2]
        assert importlib.util.find_spec(module) is not None, f"no module {module}"
        if module.startswith(("utils.", "benchmarks.")):
            main = "utils.export.__main__" if module == "utils.export" else module
            assert hasattr(importlib.import_module(main), "build_parser"), f"{module} has no build_parser()"
    else:
        check_command(list(words))


# ---- Rule 3: flags and environment variables are defined ----

FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")
VARIABLE = re.compile(r"^([A-Z][A-Z0-9_]{2,})(?:=\S*)?$")
# Programs the docs launch or name beside this project's: their own flags.
EXTERNAL_FLAGS = {"--signal", "--requeue", "--cpus-per-task", "--nodes", "--output", "--json", "--help"}
# Names in capitals that are not variables: the risk level and budget of the statistics, placeholders.
SYMBOLS = {"DELTA", "EPSILON", "VAR"}
# Programs outside this project whose flags a code span may show (checked by them, not here).
OUTSIDE_PROGRAMS = {"tensorboard", "ruff", "wandb", "srun", "sbatch", "git"}
# Variables read by programs outside this repository (torch, transformers, datasets, wandb, SLURM, the shell).
EXTERNAL_VARIABLES = {"CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "HF_DATASETS_CACHE", "WANDB_MODE", "WANDB_API_KEY",
                      "PYTHONPATH", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "SLURM_JOB_ID"}


def project_parsers() -> dict[str, set[str]]:
    """Each command-line module of the project -> the flags its build_parser() accepts."""
    parsers = {}
    for path in sorted([*ROOT.glob("utils/**/*.py"), *ROOT.glob("benchmarks/*.py")]):
        if "def build_parser" in path.read_text(encoding="utf-8"):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            parser = importlib.import_module(module).build_parser()
            parsers[module.removesuffix(".__main__")] = {option for action in parser._actions
                                                         for option in action.option_strings}
    for main in ROOT.glob("utils/**/__main__.py"):  # a package run with -m whose parser lives in another module
        package = importlib.import_module(".".join(main.parent.relative_to(ROOT).parts))
        if package.__name__ not in parsers and hasattr(package, "build_parser"):
            parsers[package.__name__] = {option for action in package.build_parser()._actions
                                         for option in action.option_strings}
    return parsers


def run_flags() -> set[str]:
    """The flags of run_classification.py, with the original scripts' renamed and ignored ones."""
    from torch.distributed.run import get_args_parser
    from transformers import HfArgumentParser

    from utils.arguments.original import IGNORED, RENAMED
    from utils.arguments.parsing import ARGUMENT_CLASSES

    parser = HfArgumentParser(ARGUMENT_CLASSES)
    torchrun = {option for action in get_args_parser()._actions for option in action.option_strings}
    return ({option for action in parser._actions for option in action.option_strings} | torchrun
            | {f"--{name}" for name in [*RENAMED, *IGNORED]} | EXTERNAL_FLAGS)


def named_modules(text: str, parsers: dict[str, set[str]]) -> set[str]:
    """The project's command-line modules a paragraph names (`python -m x.y`, `x.y`, `x/y.py`)."""
    names = set(re.findall(r"\b((?:utils|benchmarks)(?:[./]\w+)+?)(?:\.py)?\b", text))
    return {module for name in names for module in parsers if module == name.replace("/", ".")}


def undefined_flags(items: list[Item], parsers: dict[str, set[str]], run: set[str]) -> list[str]:
    everywhere = run.union(*parsers.values())
    undefined = []
    for item in items:
        if item.kind == "block":
            continue
        modules = named_modules(item.text, parsers)
        allowed = run.union(*(parsers[module] for module in modules)) if modules else everywhere
        for code in CODE.findall(item.text):
            if code.split()[0] in OUTSIDE_PROGRAMS or "<" in code:
                continue
            for flag in FLAG.findall(code):
                if flag.split("=")[0] not in allowed:
                    where = ", ".join(sorted(modules)) or "any parser of the project"
                    undefined.append(f"{item.page}:{item.line}: {flag} is not a flag of {where}")
    return undefined


def defined_variables() -> set[str]:
    """Variables the launchers read or set, those the code reads from the environment, and the code's constants."""
    shell = "\n".join(path.read_text() for path in [*ROOT.glob("scripts/**/*.sh"), *ROOT.glob("scripts/**/*.sbatch"),
                                                    ROOT / ".ci" / "run"])
    python = "\n".join(path.read_text(encoding="utf-8") for folder in ("utils", "models", "benchmarks")
                       for path in ROOT.glob(f"{folder}/**/*.py"))
    return (set(re.findall(r"\$\{?!?([A-Z][A-Z0-9_]*)", shell)) | set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", shell))
            | set(re.findall(r"environ(?:\.get)?\(?\[?\"([A-Z][A-Z0-9_]*)\"", python))
            | set(re.findall(r"(?:getenv|\.get)\(\"([A-Z][A-Z0-9_]*)\"", python)) | EXTERNAL_VARIABLES
            | set(re.findall(r"\b([A-Z][A-Z0-9_]*):[a-z_]+", shell))  # common.sh's VARIABLE:flag pairs
            | set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", python, re.M)))  # constants the docs point to


def named_variables(item: Item) -> list[str]:
    """The environment variables an item names: a code span that is one `NAME` or `NAME=value`, and the
    assignments in front of a command (a code span's or a bash block's)."""
    if item.kind == "block":
        return [name for _, command in shell_commands_of(item.text) for name in split_environment(command)[0]] \
            if item.language == "bash" else []
    names = []
    for code in CODE.findall(item.text):
        if COMMAND_START.match(code):
            names += list(split_environment(code.split())[0])
        elif VARIABLE.match(code) and code.split("=")[0] not in SYMBOLS:
            names.append(VARIABLE.match(code).group(1))
    return names


def undefined_variables(items: list[Item], defined: set[str]) -> list[str]:
    return [f"{item.page}:{item.line}: {name} is read by no launcher and no code" for item in items
            for name in named_variables(item) if name not in defined]


def test_every_flag_and_variable_named_is_defined() -> None:
    parsers, run, defined = project_parsers(), run_flags(), defined_variables()
    problems = [problem for page in PAGE_NAMES for problem in
                [*undefined_flags(ITEMS[page], parsers, run), *undefined_variables(ITEMS[page], defined)]]
    assert not problems, "\n".join(problems)


# ---- Rule 4: numbers repeated across pages agree (with each other, or with the code they describe) ----

def code_value(module: str, name: str, key: str | None = None) -> str:
    value = getattr(importlib.import_module(module), name)
    value = value[key] if key is not None else value
    return f"{value:,.0f}" if isinstance(value, float) and value.is_integer() else str(value)


# One repeated number each: (what it is, [(page, pattern with one group)], the code's value or None).
REPEATED = [
    ("one loader worker's ImageNet-like images/s",
     [("README.md", r"One loader worker decodes and augments about (\d+) ImageNet-like images/s"),
      ("docs/gpus-and-clusters.md", r"One worker delivers about (\d+) ImageNet-like images per second"),
      ("docs/gpus-and-clusters.md", r"at (\d+) images/s per worker")], None),
    ("the A100 reference of plain ViT-B/16 in images/s",
     [("README.md", r"about ([\d,]+) per A100"),
      ("docs/gpus-and-clusters.md", r"roughly\s+([\d,]+) images/s on an A100"),
      ("docs/gpus-and-clusters.md", r"about ([\d,]+) per\s+A100 and")],
     lambda: code_value("benchmarks.bench_gpu_node", "REFERENCE_IMAGES_PER_SECOND", "A100")),
    ("the H100 reference of plain ViT-B/16 in images/s",
     [("README.md", r"([\d,]+) per\s+H100"), ("docs/gpus-and-clusters.md", r"and ([\d,]+) on an H100"),
      ("docs/gpus-and-clusters.md", r"A100 and ([\d,]+) per H100 \(`REFERENCE")],
     lambda: code_value("benchmarks.bench_gpu_node", "REFERENCE_IMAGES_PER_SECOND", "H100")),
    ("workers per A100 for the base model and stage 1",
     [("README.md", r"about (\d+) workers \(A100\)"), ("docs/gpus-and-clusters.md", r"about (\d+) workers per A100")],
     None),
    ("workers per H100 for the base model and stage 1",
     [("README.md", r"\(A100\) to (\d+) \(H100\)"), ("docs/gpus-and-clusters.md", r"and (\d+) per H100 for the base")],
     None),
    ("the GPU node smoke run on CPU, base model images/s",
     [("README.md", r"CPU, 2 cores, not a GPU.*?: ([\d.]+-[\d.]+),"),
      ("docs/gpus-and-clusters.md", r"\| base \| ([\d.]+-[\d.]+) \|")], None),
    ("the GPU node smoke run on CPU, stage-1 images/s",
     [("README.md", r"CPU, 2 cores, not a GPU.*?: [\d.]+-[\d.]+, ([\d.]+-[\d.]+) and"),
      ("docs/gpus-and-clusters.md", r"\| stage 1 \(8 LGViT heads\) \| ([\d.]+-[\d.]+) \|")], None),
    ("the GPU node smoke run on CPU, stage-2 images/s",
     [("README.md", r"CPU, 2 cores, not a GPU.*? and ([\d.]+-[\d.]+) images/s"),
      ("docs/gpus-and-clusters.md", r"\| stage 2 \(backbone frozen\) \| ([\d.]+-[\d.]+) \|")], None),
    ("how many times the workers of stage 1 stage 2 needs",
     [("README.md", r"about (\w+) times that\s+for stage 2"),
      ("docs/gpus-and-clusters.md", r"it needs about (\w+) times\s+the workers")], None),
    ("the paper's global batch",
     [("README.md", r"a global batch of (\d+)"), ("docs/gpus-and-clusters.md", r"a global batch of (\d+), which"),
      ("docs/training.md", r"a global batch of (\d+) =")],
     lambda: str(192 if importlib.import_module("utils.arguments.batch_split").PAPER_PER_DEVICE_BATCH * 3 == 192
                 else "the presets changed")),
    ("the mixed-precision loss tolerance of the tests",
     [("docs/gpus-and-clusters.md", r"test_mixed_precision.py` allows (\d+%)"),
      ("docs/development.md", r"in bf16 and fp16 within (\d+%) of fp32")], None),
]


def repeated_values(text_of: Callable[[str], str], places: list[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """(page, the value its pattern finds, or None where it finds none) for each place of a repeated number."""
    found = []
    for page, pattern in places:
        match = re.search(pattern, text_of(page), re.S)
        found.append((page, match.group(1) if match else None))
    return found


def disagreements(text_of: Callable[[str], str], repeated: list) -> list[str]:
    problems = []
    for what, places, code in repeated:
        found = repeated_values(text_of, places)
        values = {value for _, value in found} | ({code()} if code is not None else set())
        if None in values or len(values) > 1:
            problems.append(f"{what}: {found}" + (f", the code: {code()}" if code is not None else ""))
    return problems


def test_numbers_repeated_across_pages_agree() -> None:
    problems = disagreements(page_text, REPEATED)
    assert not problems, "\n".join(problems)


# ---- Each rule fails on a planted error ----

def test_each_rule_fails_on_a_planted_error() -> None:
    training = page_text("docs/training.md")
    assert unresolved_references("docs/training.md", training.replace("#large-image-folders", "#large-folders"))
    assert unresolved_references("docs/x.md", 'as said under "No Such Section", in `tests/test_no_such_file.py`')
    assert not unresolved_references("docs/training.md", training)

    measured = page_items("docs/x.md", "## Speed\n\nOne step takes 2.5 s here.\n\nThe second one too, 2.4 s.\n")
    assert [item.line for item in unsourced_measurements(measured)] == [3, 5]
    sourced = page_items("docs/x.md", "## Speed\n\nMeasured by `python -m benchmarks.bench_training --tiny`:\n\n"
                                      "| step | 2.5 s |\n\nThe second one too, 2.4 s.\n")
    assert not unsourced_measurements(sourced)
    captioned = page_items("docs/x.md", "## Results\n\n| model | 0.9296 |\n\nMade by: `bash scripts/quickstart.sh`\n")
    assert not unsourced_measurements(captioned)
    with pytest.raises(AssertionError, match="rejected"):
        check_command(["python", "-m", "benchmarks.bench_training", "--no_such_flag"])

    parsers, run = project_parsers(), run_flags()
    planted = page_items("docs/x.md", "`--no_such_flag` of `run_classification.py`; `python -m "
                                      "benchmarks.bench_gpu_node` takes `--eval_batch_sizes`; `NO_SUCH_VARIABLE=1`.")
    assert len(undefined_flags(planted, parsers, run)) == 2
    assert len(undefined_variables(planted, defined_variables())) == 1

    planted_readme = page_text("README.md").replace("about 430 ImageNet-like", "about 460 ImageNet-like")
    problems = disagreements(lambda page: planted_readme if page == "README.md" else page_text(page), REPEATED)
    assert len(problems) == 1 and problems[0].startswith("one loader worker's")
