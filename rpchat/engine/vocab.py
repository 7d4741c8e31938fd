"""A model's tokenizer alone (vocab-only load: no weights), for counting prompt tokens cheaply."""

from __future__ import annotations

import ctypes
from pathlib import Path

from rpchat.engine.llama_log import route_llama_logs
from rpchat.engine.tokenizer import Tokenizer
from rpchat.errors import ModelError


class Vocab:
    """Tokenize with a GGUF model's vocabulary without loading its weights."""

    def __init__(self, path: Path) -> None:
        import llama_cpp

        route_llama_logs()
        path = Path(path)
        if not path.is_file():
            raise ModelError("model file not found", path)
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelError("not a GGUF model file", path)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ModelError("llama.cpp could not read this model's vocabulary (corrupt file?)", path)
        self._llama_cpp = llama_cpp
        self.tokenizer = Tokenizer(llama_cpp, llama_cpp.llama_model_get_vocab(self._model))

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokens of ``text``; ``special`` lets control-token text (``</s>``) become control tokens."""
        return self.tokenizer.tokenize(text, special=special)

    def count_tokens(self, text: str) -> int:
        """Number of tokens in ``text`` as plain text."""
        return self.tokenizer.count_tokens(text)

    def close(self) -> None:
        """Free the vocabulary."""
        if self._model:
            self._llama_cpp.llama_model_free(self._model)
            self._model = ctypes.c_void_p()  # falsy

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001,S110 - interpreter shutdown may have freed llama_cpp
            pass
