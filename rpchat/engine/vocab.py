"""A model's tokenizer alone (vocab-only load: no weights), for counting prompt tokens cheaply."""

from __future__ import annotations

import ctypes
from pathlib import Path

from rpchat.errors import ModelError


class Vocab:
    """Tokenize with a GGUF model's vocabulary without loading its weights."""

    def __init__(self, path: Path) -> None:
        import llama_cpp

        from rpchat.engine.llama import route_llama_logs

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
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._llama_cpp = llama_cpp

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokens of ``text``; ``special`` lets control-token text (``</s>``) become control tokens."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (self._llama_cpp.llama_token * cap)()
        n = self._llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, False, special)
        if n < 0:
            cap = -n
            buf = (self._llama_cpp.llama_token * cap)()
            n = self._llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, False, special)
        return list(buf[:n])

    def count_tokens(self, text: str) -> int:
        """Number of tokens in ``text`` as plain text."""
        return len(self.tokenize(text))

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
