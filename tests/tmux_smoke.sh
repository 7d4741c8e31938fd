#!/usr/bin/env bash
# Smoke test in a real terminal: start rpchat in tmux with an isolated profile and the tiny test model,
# open a card, send a message, wait until the streamed reply is shown, quit, and check the chat file.
# Usage: tests/tmux_smoke.sh   (needs tmux and a python3 that can import rpchat)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"
SESSION="rpchat-smoke-$$"  # also the name of a private tmux server (-L), away from the user's own
export RPCHAT_HOME="$WORK/home"

cleanup() {
    tmux -L "$SESSION" kill-server 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
    echo "tmux_smoke: $1" >&2
    echo "--- screen ---" >&2
    tmux -L "$SESSION" capture-pane -p -t "$SESSION" >&2 2>/dev/null || true
    cat "$WORK/exit" >&2 2>/dev/null || true
    exit 1
}

wait_for() {  # wait_for TEXT SECONDS
    local text="$1" tries=$(( $2 * 10 ))
    for _ in $(seq "$tries"); do
        if tmux -L "$SESSION" capture-pane -p -t "$SESSION" 2>/dev/null | grep -qF -- "$text"; then
            return 0
        fi
        sleep 0.1
    done
    fail "timed out waiting for: $text"
}

# An isolated profile: the tiny model, a config pointing at it, one card.
PYTHONPATH="$ROOT:$ROOT/tests" "$PY" - "$WORK" <<'PYEOF'
import sys
from pathlib import Path

from session_support import make_card, tiny_config, write_profile_config
from tinymodel import write_tiny_model

from rpchat.paths import profile

work = Path(sys.argv[1])
model = write_tiny_model(work / "tiny.gguf")
config = tiny_config(model, max_new=24)
write_profile_config(config)
profile().cards_dir.mkdir(parents=True)
make_card(profile().cards_dir, "Smokey")
PYEOF

tmux -L "$SESSION" new-session -d -s "$SESSION" -x 120 -y 40 \
    "cd '$ROOT' && env RPCHAT_HOME='$RPCHAT_HOME' PYTHONPATH='$ROOT' TERM=xterm-256color '$PY' -m rpchat; echo \"rpchat exited: \$?\" > '$WORK/exit'; sleep 2"

wait_for "character library" 30
tmux -L "$SESSION" send-keys -t "$SESSION" -l "Smokey"
sleep 0.3
tmux -L "$SESSION" send-keys -t "$SESSION" Enter
wait_for "Next reply:" 30
wait_for "Model ready" 60
tmux -L "$SESSION" send-keys -t "$SESSION" -l "Hello there"
tmux -L "$SESSION" send-keys -t "$SESSION" Enter
wait_for "Hello there" 10
wait_for "1st token" 60   # the status line shows what the reply cost once it has finished
tmux -L "$SESSION" send-keys -t "$SESSION" C-q
for _ in $(seq 100); do
    [ -s "$WORK/exit" ] && break
    sleep 0.1
done
[ -s "$WORK/exit" ] || fail "rpchat did not quit"
grep -q "rpchat exited: 0" "$WORK/exit" || fail "rpchat exited with an error: $(cat "$WORK/exit")"

RPCHAT_HOME="$RPCHAT_HOME" PYTHONPATH="$ROOT" "$PY" - <<'PYEOF' || fail "the chat file does not hold the reply"
from rpchat.chat.library import list_chats
from rpchat.paths import profile
from rpchat.chat.store import load_chat

entries = list_chats(profile().cards_dir / "smokey.png")
assert len(entries) == 1, entries
turns = load_chat(entries[0].path).turns
assert [t.is_user for t in turns] == [False, True, False], turns
assert turns[1].text == "Hello there" and turns[2].text and not turns[2].unfinished, turns
PYEOF
echo "tmux_smoke: ok"
