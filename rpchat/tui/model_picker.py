"""The model picker: every GGUF rpchat can find, with the format it gets and whether it fits this machine,
and models from the Hugging Face Hub.

Push ``ModelPicker(config, paths)``; it dismisses with the chosen model's `Path`, or None. Scans, Hub
requests and downloads run in thread workers; a path typed in the box is read and listed first. A Hub
search lists repos, Enter lists a repo's quant files, Enter downloads one (Esc cancels, keeping nothing)
and picks it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static

from rpchat.config import Config
from rpchat.engine.catalog import (
    CatalogEntry,
    estimate_fit,
    find_models,
    free_memory,
    gpu_offload_supported,
    in_use_model,
)
from rpchat.engine.hub import HubFile, HubRepo
from rpchat.errors import RpchatError
from rpchat.paths import Paths
from rpchat.text import strip_controls
from rpchat.tui.bindings import bindings_for


def _cell(value: object, style: str = "") -> Text:
    # Names and paths come from files: data, never markup.
    return Text(strip_controls(str(value)), style=style, no_wrap=True, overflow="ellipsis")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


class ModelPicker(ModalScreen["Path | None"]):
    """Lists models; Enter loads the one under the cursor."""

    BINDINGS: ClassVar[list[BindingType]] = bindings_for("picker")

    class Scanned(Message):
        """The scan finished."""

        def __init__(self, entries: list[CatalogEntry], problems: list[str], free: int | None, gpu: bool) -> None:
            super().__init__()
            self.entries, self.problems, self.free, self.gpu = entries, problems, free, gpu

    class HubAnswer(Message):
        """A Hub search or file listing finished (``problem`` set when it failed)."""

        def __init__(self, repo: str | None, repos: list[HubRepo], files: list[HubFile], problem: str | None) -> None:
            super().__init__()
            self.repo, self.repos, self.files, self.problem = repo, repos, files, problem

    class DownloadProgress(Message):
        def __init__(self, done: int, total: int | None) -> None:
            super().__init__()
            self.done, self.total = done, total

    class DownloadFinished(Message):
        def __init__(self, path: Path | None, problem: str | None) -> None:
            super().__init__()
            self.path, self.problem = path, problem

    def __init__(self, config: Config, paths: Paths) -> None:
        super().__init__()
        self._config, self._paths = config, paths
        self._entries: list[CatalogEntry] = []
        self._mode = "local"  # "local", "repos" (Hub search results) or "files" (one repo's quants)
        self._repos: list[HubRepo] = []
        self._files: list[HubFile] = []
        self._repo = ""
        self._free: int | None = None
        self._cancel: threading.Event | None = None  # set while a download runs
        self._downloading = ""

    def compose(self) -> ComposeResult:
        from textual.containers import Vertical

        with Vertical(id="picker"):
            yield Static("Models", id="picker-title")
            yield Input(placeholder="a .gguf path (Enter adds it to the list)", id="picker-path")
            yield Input(placeholder=_hub_placeholder(), id="hub-search")
            yield Static("Looking for models...", id="picker-note", markup=False)
            yield DataTable(id="picker-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self._scan(None)
        self.query_one(DataTable).focus()

    def _columns(self, *names: str) -> DataTable[Text]:
        table: DataTable[Text] = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns(*names)
        return table

    @work(thread=True, exclusive=True, group="scan-models", exit_on_error=False)
    def _scan(self, typed: Path | None) -> None:
        entries, problems = find_models(self._config, self._paths, typed)
        self.post_message(self.Scanned(entries, problems, free_memory(), gpu_offload_supported()))

    @on(Scanned)
    def _show(self, event: Scanned) -> None:
        self._entries, self._mode = event.entries, "local"
        for problem in event.problems:
            self.notify(problem, severity="error", markup=False)
        table = self._columns("Model", "Params", "Quant", "Size", "Trained ctx", "Format", "Fits", "Runs on",
                              "Source")
        in_use = in_use_model(self._config)[1]
        for i, entry in enumerate(event.entries):
            m = entry.info
            fit = estimate_fit(m, self._config, event.free, event.gpu)
            name = ("* " if in_use and in_use.expanduser() == m.path else "") + m.name
            table.add_row(
                _cell(name), _cell(m.size_label or "?"), _cell(m.quantization), _cell(_size(m.size_bytes)),
                _cell(f"{m.context_length:,}" if m.context_length else "?"), _cell(entry.format),
                _cell(fit.label, "" if fit.fits is not False else "red"), _cell(fit.offload), _cell(entry.source),
                key=str(i),
            )
        note = self.query_one("#picker-note", Static)
        if event.entries:
            count = f"{len(event.entries)} model{'s' if len(event.entries) != 1 else ''}"
            note.update(strip_controls(f"{count} at n_ctx {self._config.engine.n_ctx:,} "
                                       "(* = in use). Enter loads one; the chat goes on."))
        else:
            note.update("No GGUF models found: type a path above, or get one with `rpchat model get REPO`.")
            if self.focused is table:  # nothing to pick: what is typed goes to the path box
                self.query_one("#picker-path", Input).focus()

    @on(Input.Submitted, "#picker-path")
    def _typed(self, event: Input.Submitted) -> None:
        path = Path(event.value.strip()).expanduser()
        if event.value.strip():
            self._scan(path)

    @on(DataTable.RowSelected, "#picker-table")
    def _picked(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if key is None or not key.isdigit() or self._cancel is not None:
            return
        i = int(key)
        if self._mode == "local" and i < len(self._entries):
            self.dismiss(self._entries[i].info.path)
        elif self._mode == "repos" and i < len(self._repos):
            self._note(f"Listing {self._repos[i].id}...")
            self._hub_files(self._repos[i].id)
        elif self._mode == "files" and i < len(self._files):
            self._start_download(self._files[i])

    def action_rescan(self) -> None:
        """Scan the folders again."""
        self._scan(None)

    def action_close(self) -> None:
        """Esc: cancel a download, else go back to the local list, else close."""
        if self._cancel is not None:
            self._cancel.set()
            self._note("Cancelling the download...")
        elif self._mode != "local":
            self._scan(None)
        else:
            self.dismiss(None)

    def _note(self, text: str) -> None:
        self.query_one("#picker-note", Static).update(strip_controls(text))

    # --- the Hub ----------------------------------------------------------------------------------------
    @on(Input.Submitted, "#hub-search")
    def _search(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if text:
            self._note(f"Searching the Hub for {text!r}...")
            self._hub_search(text)

    @work(thread=True, exclusive=True, group="hub", exit_on_error=False)
    def _hub_search(self, text: str) -> None:
        from rpchat.engine import hub

        try:
            self.post_message(self.HubAnswer(None, hub.search(text), [], None))
        except RpchatError as e:
            self.post_message(self.HubAnswer(None, [], [], str(e)))

    @work(thread=True, exclusive=True, group="hub", exit_on_error=False)
    def _hub_files(self, repo: str) -> None:
        from rpchat.engine import hub

        try:
            self.post_message(self.HubAnswer(repo, [], hub.list_gguf_files(repo), None))
        except RpchatError as e:
            self.post_message(self.HubAnswer(repo, [], [], str(e)))

    @on(HubAnswer)
    def _hub_answer(self, event: HubAnswer) -> None:
        from rpchat.engine import hub

        if event.problem:
            self.notify(event.problem, severity="error", markup=False)
            self._note(event.problem)
            return
        if event.repo is None:
            self._mode, self._repos = "repos", event.repos
            table = self._columns("Repo", "Downloads", "Likes", "")
            for i, r in enumerate(event.repos):
                table.add_row(_cell(r.id), _cell(f"{r.downloads:,}"), _cell(f"{r.likes:,}"),
                              _cell("gated" if r.gated else ""), key=str(i))
            self._note(f"{len(event.repos)} GGUF repos. Enter lists a repo's files; Esc goes back."
                       if event.repos else "No GGUF repos match. Esc goes back.")
        else:
            self._mode, self._repo, self._files = "files", event.repo, event.files
            self._free = free_memory()
            best = hub.recommend(event.files, self._free)
            table = self._columns("File", "Quant", "Size", "Fits", "")
            for i, f in enumerate(event.files):
                fits = hub.needed_memory(f.size) <= self._free if self._free else None
                table.add_row(_cell(f.path), _cell(f.quant), _cell(f.size_label),
                              _cell({True: "fits", False: "too big", None: "?"}[fits], "" if fits is not False else "red"),
                              _cell("recommended" if f == best else ""), key=str(i))
            if best is not None:
                table.move_cursor(row=event.files.index(best))
            self._note(f"{event.repo}: Enter downloads a file into the Hugging Face cache and loads it.")

    def _start_download(self, file: HubFile) -> None:
        self._cancel = threading.Event()
        self._downloading = f"{self._repo}/{file.path}"
        self._note(f"Downloading {self._downloading} ({file.size_label})... Esc cancels")
        self._download(self._repo, file, self._cancel)

    @work(thread=True, exclusive=True, group="download", exit_on_error=False)
    def _download(self, repo: str, file: HubFile, cancel: threading.Event) -> None:
        from rpchat.engine import hub

        def progress(done: int, total: int | None) -> None:
            self.post_message(self.DownloadProgress(done, total))

        try:
            path = hub.download(repo, file, progress=progress, cancel=cancel)
        except RpchatError as e:
            self.post_message(self.DownloadFinished(None, str(e)))
            return
        self.post_message(self.DownloadFinished(path, None))

    @on(DownloadProgress)
    def _progress(self, event: DownloadProgress) -> None:
        if self._cancel is None or self._cancel.is_set():
            return
        pct = f"{event.done * 100 // event.total}%  " if event.total else ""
        total = f" / {event.total / 2**20:,.1f}" if event.total else ""
        self._note(f"Downloading {self._downloading}: {pct}{event.done / 2**20:,.1f}{total} MiB (Esc cancels)")

    @on(DownloadFinished)
    def _finished(self, event: DownloadFinished) -> None:
        self._cancel = None
        if event.path is not None:
            self.dismiss(event.path)
            return
        problem = event.problem or "download failed"
        self.notify(problem, severity="warning" if "cancelled" in problem else "error", markup=False)
        self._note(problem)


def _hub_placeholder() -> str:
    # The seed models are the quick searches: their names come from the model rules, not from code.
    from rpchat.engine.recognize import load_rules

    try:
        names = [r.name for r in load_rules().models if not r.adapter]
    except RpchatError:
        names = []
    hint = f", e.g. {', '.join(names)}" if names else ""
    return f"search the Hugging Face Hub (Enter){hint}"
