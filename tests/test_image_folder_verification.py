"""Image folders are checked for unreadable files once per folder state, not at every load in every process."""

from __future__ import annotations

import logging
import multiprocessing
import shutil
from pathlib import Path

import pytest
from PIL import Image as PILImage

from benchmarks.bench_startup import write_folder as write_benchmark_folder
from utils.data import image_folder
from utils.data.image_folder import load_image_folders

GOOD_FILES = 6


def write_folder(root: Path) -> Path:
    """Two classes of small images and one file that is not an image."""
    for index in range(GOOD_FILES):
        path = root / ("cat" if index % 2 else "dog") / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.new("RGB", (8, 8), (index * 40, 0, 0)).save(path)
    (root / "cat" / "notes.jpg").write_text("not an image")
    return root


def count_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths opened by the check from now on."""
    opened: list[str] = []
    check = image_folder.is_readable_image
    monkeypatch.setattr(image_folder, "is_readable_image", lambda path: opened.append(path) or check(path))
    return opened


def load(root: Path, cache: Path) -> list[str]:
    """The image paths of the train split of `root`."""
    return image_folder.image_paths(load_image_folders(str(root), None, str(cache))["train"])


def test_two_loads_open_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = write_folder(tmp_path / "images"), tmp_path / "cache"
    opened = count_checks(monkeypatch)
    first = load(root, cache)
    assert len(opened) == GOOD_FILES + 1 and len(first) == GOOD_FILES
    assert load(root, cache) == first
    assert len(opened) == GOOD_FILES + 1


def test_a_bad_file_is_named_at_every_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, cache = write_folder(tmp_path / "images"), tmp_path / "cache"
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            paths = load(root, cache)
        assert "notes.jpg (train split): not a readable image file" in caplog.text
        assert not any(path.endswith("notes.jpg") for path in paths)


def add_file(root: Path) -> None:
    PILImage.new("RGB", (8, 8)).save(root / "dog" / "new.png")


def remove_file(root: Path) -> None:
    (root / "dog" / "0.png").unlink()


def break_file(root: Path) -> None:
    """Overwrite a good image with as many bytes of garbage."""
    path = root / "dog" / "0.png"
    path.write_bytes(b"x" * path.stat().st_size)


@pytest.mark.parametrize("change, rows", [(add_file, GOOD_FILES + 1), (remove_file, GOOD_FILES - 1),
                                          (break_file, GOOD_FILES - 1)])
def test_a_changed_folder_is_checked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change, rows) -> None:
    root, cache = write_folder(tmp_path / "images"), tmp_path / "cache"
    load(root, cache)
    change(root)
    opened = count_checks(monkeypatch)
    assert len(load(root, cache)) == rows
    assert len(opened) == rows + (2 if change is break_file else 1)


def test_a_cleared_dataset_cache_is_rebuilt_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = write_folder(tmp_path / "images"), tmp_path / "cache"
    first = load(root, cache)
    shutil.rmtree(cache / "imagefolder")
    opened = count_checks(monkeypatch)
    assert load(root, cache) == first and len(opened) == GOOD_FILES + 1


def load_in_child(root: Path, cache: Path, start: multiprocessing.Barrier, rows: multiprocessing.Queue) -> None:
    start.wait()
    rows.put(len(load(root, cache)))


def test_processes_starting_together_check_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes loading the same folder at the same moment (ranks, or nodes sharing the cache): one checks,
    the other waits for its record."""
    root, cache = write_folder(tmp_path / "images"), tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    checks = context.Value("i", 0)
    check = image_folder.is_readable_image

    def counted(path: str) -> bool:
        with checks.get_lock():
            checks.value += 1
        return check(path)

    monkeypatch.setattr(image_folder, "is_readable_image", counted)
    start, rows = context.Barrier(2), context.Queue()
    children = [context.Process(target=load_in_child, args=(root, cache, start, rows)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    assert [rows.get(timeout=5), rows.get(timeout=5)] == [GOOD_FILES, GOOD_FILES]
    assert checks.value == GOOD_FILES + 1


def test_the_startup_benchmark_folder_loads_whole(tmp_path: Path) -> None:
    """The folder `benchmarks.bench_startup` times holds as many readable images as asked, over every class."""
    write_benchmark_folder(tmp_path / "images", images=25, classes=5)
    data = load_image_folders(str(tmp_path / "images"), None, str(tmp_path / "cache"))["train"]
    assert len(data) == 25 and data.features["label"].num_classes == 5
