"""The model picker: every GGUF rpchat can find, with the format it gets and whether it fits this machine.

Push ``ModelPicker(config, paths)``; it dismisses with the chosen model's `Path`, or None. The scan runs
in a thread worker (reading headers touches disk); a path typed in the box is read and listed first.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static

from rpchat.config import Config
from rpchat.engine.catalog import CatalogEntry, estimate_fit, find_models, free_memory, gpu_offload_supported
from rpchat.paths import Paths
from rpchat.text import strip_controls


def _cell(value: object, style: str = "") -> Text:
    # Names and paths come from files: data, never markup.
    return Text(strip_controls(str(value)), style=style, no_wrap=True, overflow="ellipsis")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


class ModelPicker(ModalScreen["Path | None"]):
    """Lists models; Enter loads the one under the cursor."""

    DEFAULT_CSS = """
    ModelPicker { align: center middle; }
    ModelPicker > #picker { width: 96%; height: 90%; border: thick $primary 60%; background: $surface; }
    ModelPicker #picker-title { text-style: bold; color: $primary; padding: 0 1; }
    ModelPicker #picker-note { color: $text-muted; padding: 0 1; height: auto; }
    ModelPicker DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", id="picker.close"),
        Binding("ctrl+r", "rescan", "Rescan", id="picker.rescan"),
    ]

    class Scanned(Message):
        """The scan finished."""

        def __init__(self, entries: list[CatalogEntry], problems: list[str], free: int | None, gpu: bool) -> None:
            super().__init__()
            self.entries, self.problems, self.free, self.gpu = entries, problems, free, gpu

    def __init__(self, config: Config, paths: Paths) -> None:
        super().__init__()
        self._config, self._paths = config, paths
        self._entries: list[CatalogEntry] = []

    def compose(self) -> ComposeResult:
        from textual.containers import Vertical

        with Vertical(id="picker"):
            yield Static("Models", id="picker-title")
            yield Input(placeholder="a .gguf path (Enter adds it to the list)", id="picker-path")
            yield Static("Looking for models...", id="picker-note", markup=False)
            yield DataTable(id="picker-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("Model", "Params", "Quant", "Size", "Trained ctx", "Format", "Fits", "Runs on", "Source")
        self._scan(None)
        table.focus()

    @work(thread=True, exclusive=True, group="scan-models", exit_on_error=False)
    def _scan(self, typed: Path | None) -> None:
        entries, problems = find_models(self._config, self._paths, typed)
        self.post_message(self.Scanned(entries, problems, free_memory(), gpu_offload_supported()))

    @on(Scanned)
    def _show(self, event: Scanned) -> None:
        self._entries = event.entries
        for problem in event.problems:
            self.notify(problem, severity="error", markup=False)
        table = self.query_one(DataTable)
        table.clear()
        in_use = self._config.engine.model
        for i, entry in enumerate(event.entries):
            m = entry.info
            fit = estimate_fit(m, self._config, event.free, event.gpu)
            name = ("* " if in_use and Path(in_use).expanduser() == m.path else "") + m.name
            table.add_row(
                _cell(name), _cell(m.size_label or "?"), _cell(m.quantization), _cell(_size(m.size_bytes)),
                _cell(f"{m.context_length:,}" if m.context_length else "?"), _cell(entry.format),
                _cell(fit.label, "" if fit.fits is not False else "red"), _cell(fit.offload), _cell(entry.source),
                key=str(i),
            )
        note = self.query_one("#picker-note", Static)
        if event.entries:
            note.update(strip_controls(f"{len(event.entries)} models at n_ctx {self._config.engine.n_ctx:,} "
                                       "(* = in use). Enter loads one; the chat goes on."))
        else:
            note.update("No GGUF models found: type a path above, or get one with `rpchat model get REPO`.")

    @on(Input.Submitted, "#picker-path")
    def _typed(self, event: Input.Submitted) -> None:
        path = Path(event.value.strip()).expanduser()
        if event.value.strip():
            self._scan(path)

    @on(DataTable.RowSelected, "#picker-table")
    def _picked(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if key is not None and key.isdigit() and int(key) < len(self._entries):
            self.dismiss(self._entries[int(key)].info.path)

    def action_rescan(self) -> None:
        """Scan the folders again."""
        self._scan(None)

    def action_close(self) -> None:
        self.dismiss(None)
