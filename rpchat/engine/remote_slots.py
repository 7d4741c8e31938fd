"""Saved chat states on a remote llama-server: its slot save/restore (``--slot-save-path``).

After a reply the slot that served it is saved on the server as ``rpchat-<chat>-<model tag>.bin``; before the
first request for a chat (after a restart of rpchat or of the server, or a switch between chats) that file is
restored into the slot, so the server's own prompt cache then evaluates only the rest. A server started
without ``--slot-save-path`` answers 501: saving stops with one notice. A chat never saved there is simply
evaluated. The local engine's states are `rpchat.engine.kvstate`.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Protocol

import httpx

if TYPE_CHECKING:
    from rpchat.engine.remote_http import Connection


class SlotHost(Protocol):
    """What slot states use of `rpchat.engine.remote.RemoteEngine` (which owns one)."""

    @property
    def api(self) -> str: ...

    def slot_connection(self) -> tuple[Connection | None, str]: ...

NOT_SUPPORTED = 501  # llama-server without --slot-save-path
SLOT = 0


class SlotStates:
    """One remote engine's chat states, kept by the llama-server in its slot-save folder."""

    def __init__(self) -> None:
        self.owner: str | None = None  # the chat the next request is for
        self.notices: list[str] = []
        self._served: str | None = None  # the chat whose prompt the slot holds, as far as rpchat knows
        self._off = False

    def claim(self, chat: str) -> None:
        """The next generation on this engine is for ``chat``."""
        self.owner = chat

    def take_notices(self) -> list[str]:
        """Problems met since the last call."""
        out, self.notices = self.notices, []
        return out

    def reset(self) -> None:
        """A new connection: the server may have restarted, the slot holds nothing of ours."""
        self._served = None

    def before_request(self, engine: SlotHost, body: dict[str, Any]) -> None:
        """Restore the claimed chat's saved slot when the slot may hold another prompt; pins the request
        to that slot. Any failure leaves the request to evaluate the prompt as usual."""
        chat = self.owner
        if self._off or chat is None or engine.api != "llama.cpp":
            return
        # One slot for rpchat's chats, so that the slot saved is the one that served the reply.
        body["id_slot"] = SLOT
        if self._served != chat:
            self._served = chat  # tried once per switch, restored or not
            self._action(engine, "restore", chat)

    def save(self, engine: SlotHost, chat: str) -> None:
        """Save the slot holding ``chat`` on the server (after a reply); nothing when it cannot."""
        if self._off or engine.api != "llama.cpp" or self.owner != chat:
            return
        if self._action(engine, "save", chat) is not None:
            self._served = chat

    def _action(self, engine: SlotHost, action: str, chat: str) -> dict[str, Any] | None:
        conn, tag = engine.slot_connection()
        if conn is None:
            return None
        name = f"rpchat-{chat}-{tag}.bin"
        try:
            with conn.request("POST", f"/slots/{SLOT}?action={action}", {"filename": name}) as response:
                status = response.status_code
                answer = conn.read_json(response, "/slots") if status == 200 else None
        except (httpx.HTTPError, OSError, ValueError):
            return None
        except Exception:  # noqa: BLE001 - an EngineError from the transport: the reply itself still works
            return None
        if status == NOT_SUPPORTED:
            # A server without --slot-save-path: nothing to do, and nothing to say (issue 10: "otherwise
            # nothing"); README tells how to turn it on. A notice here printed on every `rpchat reply`.
            self._off = True
            return None
        return answer if isinstance(answer, dict) else None


def model_tag(model_name: str, n_ctx: int) -> str:
    """A short name for what a slot file is valid for: the server's model and context size."""
    return hashlib.sha256(f"{model_name}\0{n_ctx}".encode()).hexdigest()[:12]
