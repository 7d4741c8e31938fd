"""A tiny random-weight `llama` GGUF for tests: loads in milliseconds, tokenizes ordinary text.

The vocabulary is a SentencePiece-style one: ``<unk> <s> </s>``, two chat-template control tokens,
the 256 ``<0xNN>`` byte tokens, then word pieces (every prefix of each word, so SPM merges reach
the whole word). With ``successors`` the weights make greedy decoding follow a fixed script.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

UNK, BOS, EOS = 0, 1, 2
CONTROL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
BYTE_BASE = len(CONTROL_TOKENS)  # id of <0x00>

_WORDS = [
    "the", "Input", "Response", "Instruction", "User", "you", "and", "to", "of", "a", "is", "it",
    "Hello", "world", "hello", "said", "She", "He", "smiles", "length", "medium", "short", "long",
    "Marisol", "Theo", "island", "beach", "Where", "am", "I", "What", "in", "on", "at", "with",
    "character", "roleplay", "scenario", "Persona", "chat", "between",
]
_SYMBOLS = ["###", "(", ")", ":", ".", ",", "!", "?", "*", '"', "'", "-", "/", "<", ">", "|", "[", "]"]


def tiny_tokens(n_vocab: int = 512) -> list[str]:
    """The token texts of the tiny vocabulary, index = token id."""
    tokens: list[str] = list(CONTROL_TOKENS)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    seen = set(tokens)

    def add(piece: str) -> None:
        if piece not in seen and len(tokens) < n_vocab:
            seen.add(piece)
            tokens.append(piece)

    add("▁")
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
        add(ch)
        add("▁" + ch)
    for sym in _SYMBOLS:
        for i in range(1, len(sym) + 1):
            add(sym[:i])
        add("▁" + sym)
        for i in range(2, len(sym) + 1):
            add("▁" + sym[:i])
    for word in _WORDS:
        for i in range(2, len(word) + 1):
            add("▁" + word[:i])
            add(word[:i])
    # Fill the rest with two-letter pieces so every id is a valid, unique token.
    letters = "etaoinshrdlucmfwyp"
    for a in letters:
        for b in letters:
            add(a + b)
    n = 0
    while len(tokens) < n_vocab:
        add(f"▁w{n}")
        n += 1
    if len(tokens) < n_vocab:
        raise ValueError(f"n_vocab {n_vocab} too small")
    return tokens[:n_vocab]


def token_id(text: str, n_vocab: int = 512) -> int:
    """The id of one token of the tiny vocabulary (``"▁the"``, ``"<0xC3>"``, ``"</s>"``...)."""
    return tiny_tokens(n_vocab).index(text)


def write_tiny_model(
    path: Path,
    *,
    n_vocab: int = 512,
    n_ctx: int = 2048,
    n_embd: int = 64,
    n_layer: int = 2,
    seed: int = 0,
    successors: Mapping[int, int] | None = None,
    name: str = "tiny-llama",
    metadata: Mapping[str, str] | None = None,
    delta: Mapping[str, np.ndarray] | None = None,
    n_expert: int = 0,
) -> Path:
    """Write a random float32 llama GGUF to ``path`` and return it.

    ``metadata`` adds text keys (``general.basename``, ``tokenizer.chat_template``...); a key
    ``general.name`` there replaces ``name``. ``delta`` is added to the named tensors (same seed, same
    random weights): a LoRA merged by hand. ``n_expert`` > 0 makes a Mixtral-style MoE (all experts used).

    ``successors`` maps token id -> next token id: the attention and FFN outputs are zeroed and the
    output matrix is built so greedy decoding after token ``a`` picks ``successors[a]``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_head = 4
    n_ff = n_embd * 2
    tokens = tiny_tokens(n_vocab)

    writer = GGUFWriter(str(path), "llama")
    extra = dict(metadata or {})
    writer.add_name(extra.pop("general.name", name))
    for key, value in extra.items():
        writer.add_string(key, value)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    if n_expert:
        writer.add_expert_count(n_expert)
        writer.add_expert_used_count(n_expert)
    writer.add_file_type(0)  # ALL_F32

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    scores, types = [], []
    for i, tok in enumerate(tokens):
        if i < BYTE_BASE:
            types.append(TokenType.UNKNOWN if i == UNK else TokenType.CONTROL)
            scores.append(0.0)
        elif i < BYTE_BASE + 256:
            types.append(TokenType.BYTE)
            scores.append(0.0)
        else:
            types.append(TokenType.NORMAL)
            # Longer pieces score higher, so SPM merges prefer whole words.
            scores.append(float(len(tok)) - i * 1e-4)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_unk_token_id(UNK)
    writer.add_add_bos_token(True)

    def rand(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def add(name: str, value: np.ndarray) -> None:
        change = (delta or {}).get(name)
        writer.add_tensor(name, value if change is None else (value + change).astype(np.float32))

    scripted = successors is not None
    embd = rng.standard_normal((n_vocab, n_embd)).astype(np.float32)
    output = rand(n_vocab, n_embd, scale=0.02 if scripted else 0.5)
    if scripted:
        for a, b in successors.items():
            unit = embd[a] / np.linalg.norm(embd[a])
            output[b] += 20.0 * unit
    add("token_embd.weight", embd)
    add("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    add("output.weight", output)
    for i in range(n_layer):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        add(p + "attn_q.weight", rand(n_embd, n_embd, scale=0.2))
        add(p + "attn_k.weight", rand(n_embd, n_embd, scale=0.2))
        add(p + "attn_v.weight", rand(n_embd, n_embd, scale=0.2))
        out_scale = 0.0 if scripted else 0.2
        add(p + "attn_output.weight", rand(n_embd, n_embd, scale=out_scale))
        add(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        if n_expert:
            add(p + "ffn_gate_inp.weight", rand(n_expert, n_embd, scale=0.2))
            add(p + "ffn_gate_exps.weight", rand(n_expert, n_ff, n_embd, scale=0.2))
            add(p + "ffn_up_exps.weight", rand(n_expert, n_ff, n_embd, scale=0.2))
            add(p + "ffn_down_exps.weight", rand(n_expert, n_embd, n_ff, scale=out_scale))
            continue
        add(p + "ffn_gate.weight", rand(n_ff, n_embd, scale=0.2))
        add(p + "ffn_up.weight", rand(n_ff, n_embd, scale=0.2))
        add(p + "ffn_down.weight", rand(n_embd, n_ff, scale=out_scale))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_lora(model: Path, path: Path, *, after: int, instead: int) -> Path:
    """A rank-1 LoRA adapter for a ``successors`` model: after token ``after`` it picks ``instead``.

    It targets ``output.weight``: one row loses the scripted boost, another gains a stronger one.
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(model))
    tensors = {t.name: t for t in reader.tensors}
    embd = np.array(tensors["token_embd.weight"].data, dtype=np.float32)
    output = np.array(tensors["output.weight"].data, dtype=np.float32)
    n_vocab, n_embd = output.shape
    unit = embd[after] / np.linalg.norm(embd[after])
    old_next = int(np.argmax(output @ (embd[after] / np.sqrt(np.mean(embd[after] ** 2)))))

    writer = GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 1.0)
    lora_a = unit.reshape(1, n_embd).astype(np.float32)  # ggml ne = [n_embd, rank]
    lora_b = np.zeros((n_vocab, 1), dtype=np.float32)  # ggml ne = [rank, n_vocab]
    lora_b[old_next, 0] = -20.0
    lora_b[instead, 0] = 40.0
    writer.add_tensor("output.weight.lora_a", lora_a)
    writer.add_tensor("output.weight.lora_b", lora_b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
