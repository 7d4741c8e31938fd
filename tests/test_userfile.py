"""Every loader reads user files the same bounded, non-blocking way (FIFOs, folders, huge files)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from rpchat.cards import load_card
from rpchat.chat.store import load_chat
from rpchat.errors import CardError, ChatError, ConfigError, RpchatError
from rpchat.prompt.lorebook import load_lorebook
from rpchat.yamlfile import load_yaml

LOADERS: list[tuple[str, Callable[[Path], object], type[RpchatError]]] = [
    ("card.png", load_card, CardError),
    ("chat.jsonl", load_chat, ChatError),
    ("world.json", load_lorebook, ConfigError),
    ("config.yaml", load_yaml, ConfigError),
]


def _outcome(load: Callable[[Path], object], path: Path) -> BaseException | None:
    # Run in a thread so a loader that blocks fails this test instead of hanging the suite.
    box: list[BaseException | None] = []

    def target() -> None:
        try:
            load(path)
            box.append(None)
        except BaseException as e:  # noqa: BLE001 - the test inspects whatever came out
            box.append(e)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(10)
    assert box, f"{load.__name__} blocked on {path.name}"
    return box[0]


@pytest.mark.parametrize(("name", "load", "error"), LOADERS)
def test_a_fifo_is_refused_at_once(tmp_path: Path, name: str, load: Callable[[Path], object],
                                   error: type[RpchatError]) -> None:
    path = tmp_path / name
    os.mkfifo(path)
    e = _outcome(load, path)
    assert isinstance(e, error) and "not a regular file" in str(e) and name in str(e)


@pytest.mark.parametrize(("name", "load", "error"), LOADERS)
def test_a_folder_and_a_missing_file_are_one_line_errors(tmp_path: Path, name: str,
                                                        load: Callable[[Path], object],
                                                        error: type[RpchatError]) -> None:
    folder = tmp_path / name
    folder.mkdir()
    e = _outcome(load, folder)
    assert isinstance(e, error) and "is a folder" in str(e)
    e = _outcome(load, tmp_path / ("missing-" + name))
    assert isinstance(e, error) and "missing-" + name in str(e) and "\n" not in str(e)


def test_st_preset_import_and_world_attach_refuse_a_fifo(tmp_path: Path) -> None:
    from rpchat.engine.presets import import_st_textgen
    from rpchat.worlds import import_world

    fifo = tmp_path / "preset.json"
    os.mkfifo(fifo)
    for load in (import_st_textgen, lambda p: import_world(p, tmp_path / "worlds")):
        e = _outcome(load, fifo)
        assert isinstance(e, ConfigError) and "not a regular file" in str(e)
    assert not (tmp_path / "worlds").exists() or not any((tmp_path / "worlds").iterdir())


def test_gguf_metadata_reader_refuses_a_fifo(tmp_path: Path) -> None:
    from rpchat.engine.gguf_info import read_gguf_info
    from rpchat.errors import ModelError

    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    e = _outcome(read_gguf_info, fifo)
    assert isinstance(e, ModelError) and "not a regular file" in str(e)
