"""Context fitting: whole older turns dropped oldest-first, in chunks, with a stable cut."""

from __future__ import annotations

import collections
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpchat.cards.model import Card
from rpchat.chat.model import Chat, Turn
from rpchat.personas import Persona
from rpchat.prompt import build_prompt, load_format
from rpchat.prompt.fitting import TokenCache, choose_cut, chunk_boundaries

CARD = Card(name="Ada", description="A clockwork inventor. " * 10, first_mes="Hello there, traveller.")
THEO = Persona("Theo", "A sailor.")


def count(text: str) -> int:
    """A stand-in tokenizer: one token per 4 characters, rounded up (so pieces do not add up exactly)."""
    return -(-len(text) // 4)


def _chat(n: int) -> list[Turn]:
    chat = Chat.start("Ada", "Theo", CARD.greetings)
    for i in range(n):
        is_user = (n - i) % 2 == 1  # the chat ends with the user's message
        words = f"message {i} " + ("word " * (5 + (i * 7) % 23))
        chat.add(is_user, words)
    return chat.turns


def test_no_counter_keeps_everything() -> None:
    built = build_prompt(load_format("limarp-v3"), CARD, THEO, _chat(30), n_ctx=64)
    assert built.dropped == () and built.first_kept is None and built.n_tokens is None


def test_counter_without_n_ctx_only_counts() -> None:
    built = build_prompt(load_format("limarp-v3"), CARD, THEO, _chat(4), counter=count)
    assert built.dropped == ()
    assert built.n_tokens == count(built.text)


def test_drops_oldest_whole_turns_and_keeps_instruction_and_last_exchange() -> None:
    turns = _chat(40)
    built = build_prompt(
        load_format("limarp-v3"), CARD, THEO, turns, counter=count, n_ctx=600, max_new=100, length="medium"
    )
    assert built.dropped and built.dropped == tuple(range(len(built.dropped)))
    assert built.first_kept == len(built.dropped)
    assert built.n_tokens == count(built.text) and built.n_tokens <= 500
    text = built.text
    assert text.startswith("### Instruction:\nAda's Persona: A clockwork inventor.")
    assert "Play the role of Ada." in text
    assert "Hello there, traveller." not in text  # the greeting was the oldest turn
    for i, turn in enumerate(turns):
        line = f"{'Theo' if turn.is_user else 'Ada'}: {turn.text.strip()}\n"
        assert (line in text + "\n") == (i >= built.first_kept), i
    # After the instruction comes a whole turn, never a fragment.
    after = text.split("Do not write dialogues and narration for Theo.\n\n", 1)[1]
    assert after.startswith(("### Input:\n", "### Response:\n"))
    assert text.endswith(f"Theo: {turns[-1].text.strip()}\n\n### Response: (length = medium)\nAda:")


def test_last_exchange_stays_even_over_budget() -> None:
    turns = _chat(6)
    turns[-1].swipes[0] = "long " * 400
    built = build_prompt(load_format("limarp-v3"), CARD, THEO, turns, counter=count, n_ctx=300, max_new=50)
    assert built.dropped == tuple(range(len(turns) - 2))
    assert built.n_tokens is not None and built.n_tokens > 250
    assert turns[-2].text.strip() in built.text and "long long" in built.text


def test_cut_is_stable_while_chatting() -> None:
    """Appending turns one by one: the cut moves rarely, in big steps, and between moves the prompt
    start is byte-identical (the engine's prefix cache keeps working)."""
    fmt = load_format("limarp-v3")
    all_turns = _chat(120)
    budget = 800 - 150
    cuts: list[int] = []
    previous: tuple[int, str] | None = None
    for n in range(3, len(all_turns) + 1):
        built = build_prompt(fmt, CARD, THEO, all_turns[:n], counter=count, n_ctx=800, max_new=150, length="medium")
        assert built.n_tokens is not None and built.n_tokens <= budget
        cut = len(built.dropped)
        if previous is not None and previous[0] == cut:
            # Same cut: everything up to the previous prompt's final header is unchanged.
            stable = previous[1][: previous[1].rindex("### Response: (length = medium)")]
            assert built.text.startswith(stable)
        if previous is not None and cut != previous[0]:
            assert cut > previous[0]
            # A move drops a chunk: the prompt goes back to about 75% of the budget or less.
            assert built.n_tokens <= 0.85 * budget
        previous = (cut, built.text)
        cuts.append(cut)
    moves = sum(1 for a, b in itertools.pairwise(cuts) if a != b)
    assert moves >= 3  # the chat is long enough to overflow several times
    runs = collections.Counter(cuts)
    # Each cut is reused for several turns (the last one may still be young).
    assert all(length >= 3 for cut, length in runs.items() if cut and cut != cuts[-1])
    assert moves <= len(cuts) // 4


def test_deterministic_and_stateless() -> None:
    fmt = load_format("limarp-v3")
    turns = _chat(60)
    a = build_prompt(fmt, CARD, THEO, turns, counter=count, n_ctx=700, max_new=100)
    b = build_prompt(fmt, CARD, THEO, turns, counter=count, n_ctx=700, max_new=100)
    assert a == b


def test_each_text_counted_once() -> None:
    seen: collections.Counter[str] = collections.Counter()

    def counting(text: str) -> int:
        seen[text] += 1
        return count(text)

    build_prompt(load_format("limarp-v3"), CARD, THEO, _chat(80), counter=counting, n_ctx=900, max_new=100)
    assert seen and max(seen.values()) == 1
    # Roughly one call per message plus a few for the fixed parts and the final total.
    assert len(seen) <= 81 + 6


def test_limamono_fits_too() -> None:
    built = build_prompt(load_format("limamono"), CARD, THEO, _chat(40), counter=count, n_ctx=500, max_new=100)
    assert built.dropped and built.n_tokens is not None and built.n_tokens <= 400
    assert built.text.startswith("Below is an instruction")


def test_choose_cut_directly() -> None:
    costs = [10] * 20
    assert choose_cut(costs, 50, 1000) == 0
    assert chunk_boundaries(costs, 25) == [0, 3, 6, 9, 12, 15, 18]
    # 50 + 200 > 200: the first boundary that fits is 6 (50 + 140 = 190).
    assert choose_cut(costs, 50, 200, chunk=25) == 6
    # Appending turns keeps the cut until it overflows again.
    assert choose_cut([10] * 21, 50, 200, chunk=25) == 6
    assert choose_cut([10] * 22, 50, 200, chunk=25) == 9
    # Nothing fits: keep the last exchange anyway.
    assert choose_cut([500, 500, 500], 0, 100, keep_last=2) == 1


@settings(max_examples=300, deadline=None)
@given(
    costs=st.lists(st.integers(min_value=1, max_value=300), max_size=60),
    extra=st.integers(min_value=1, max_value=300),
    fixed=st.integers(min_value=0, max_value=500),
    budget=st.integers(min_value=50, max_value=3000),
)
def test_choose_cut_properties(costs: list[int], extra: int, fixed: int, budget: int) -> None:
    cut = choose_cut(costs, fixed, budget)
    max_cut = max(0, len(costs) - 2)
    assert 0 <= cut <= max_cut
    if cut < max_cut or fixed + sum(costs[cut:]) <= budget:
        assert fixed + sum(costs[cut:]) <= budget
    # Appending a turn never brings dropped turns back (the prompt start only moves forward).
    assert choose_cut([*costs, extra], fixed, budget) >= cut


def test_token_cache_counts_each_message_once_across_replies() -> None:
    seen: collections.Counter[str] = collections.Counter()

    def counting(text: str) -> int:
        seen[text] += 1
        return count(text)

    cached = TokenCache(counting, max_items=10_000)
    fmt = load_format("limarp-v3")
    turns = _chat(40)
    for n in range(30, 41):
        build_prompt(fmt, CARD, THEO, turns[:n], counter=cached, n_ctx=700, max_new=100)
    assert max(seen.values()) == 1
    small = TokenCache(counting, max_items=2)
    assert [small("a"), small("bb"), small("ccc"), small("a")] == [1, 1, 1, 1]
    assert seen["a"] == 2  # "a" had been evicted


def test_fitting_with_a_real_tokenizer(demo_model) -> None:
    """Gemma's tokenizer does not add up piece by piece; the total still stays within budget."""
    pytest.importorskip("llama_cpp")
    from rpchat.engine.vocab import Vocab

    vocab = Vocab(demo_model)
    try:
        fmt = load_format("limarp-v3")
        turns = _chat(60)
        cuts = []
        for n in range(40, 61):
            built = build_prompt(fmt, CARD, THEO, turns[:n], counter=vocab.count_tokens, n_ctx=768, max_new=128,
                                 length="medium")
            assert built.n_tokens == vocab.count_tokens(built.text) <= 768 - 128
            assert built.dropped
            cuts.append(len(built.dropped))
        assert len(set(cuts)) <= len(cuts) // 3
    finally:
        vocab.close()
