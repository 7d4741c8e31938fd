"""The sampler chain on real logits: the tiny GGUF's outputs and vocabulary-sized arrays."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import llama_cpp as L
import numpy as np
import pytest
from tinymodel import token_id

from rpchat.engine.base import Sampling
from rpchat.engine.custom_samplers import TOKEN_DATA, PenaltySampler, tail_free_keep
from rpchat.engine.presets import list_presets
from rpchat.engine.sampling import SamplerChain
from rpchat.errors import EngineError

PROMPTS = [
    "Hello world, said the character.",
    "### Input: User: Where am I?",
    "She smiles at you and the island",
    "Marisol and Theo on the beach",
]


def reference_tfs_count(logits: np.ndarray, z: float, min_keep: int = 1) -> int:
    """llama.cpp's removed tail-free sampler, step by step on the whole vocabulary (float64)."""
    p = np.sort(np.asarray(logits, np.float64))[::-1]
    if z >= 1.0 or p.shape[0] <= 2:
        return p.shape[0]
    p = np.exp(p - p[0])
    p /= p.sum()
    first = p[:-1] - p[1:]
    second = np.abs(first[:-1] - first[1:])
    total = second.sum()
    second = second / total if total > 1e-6 else np.full_like(second, 1.0 / second.shape[0])
    running = 0.0
    for i, value in enumerate(second):
        running += value
        if running > z and i >= min_keep:
            return i
    return p.shape[0]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


@pytest.fixture(scope="module")
def llm(tiny_model: Path) -> Iterator[L.Llama]:
    model = L.Llama(str(tiny_model), n_ctx=512, n_batch=512, verbose=False)
    yield model
    model.close()


def evaluate(llm: L.Llama, text: str) -> tuple[list[int], np.ndarray]:
    """Tokens of ``text`` and the model's real logits for the next token."""
    tokens = llm.tokenize(text.encode())
    llm.reset()
    llm.eval(tokens)
    row = L.llama_get_logits_ith(llm.ctx, -1)
    return tokens, np.ctypeslib.as_array(row, shape=(llm.n_vocab(),)).copy()


def lm_like_logits(seed: int, n: int = 262_144) -> np.ndarray:
    """A Gemma-sized row shaped like real LM logits: a broad body plus a few strong candidates."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(n).astype(np.float32) * 2.5
    head = rng.choice(n, 40, replace=False)
    logits[head] += rng.uniform(6, 14, 40).astype(np.float32)
    return logits


def chain(llm: L.Llama, history: list[int] | tuple[int, ...] = (), **settings: object) -> SamplerChain:
    return SamplerChain(llm.model, llm.ctx, Sampling(**settings), history)  # type: ignore[arg-type]


# --- tail-free sampling ---------------------------------------------------------------------


@pytest.mark.parametrize("z", [0.5, 0.85, 0.9, 0.95])
def test_tfs_keeps_what_the_reference_keeps_on_model_logits(llm: L.Llama, z: float) -> None:
    for text in PROMPTS:
        _, logits = evaluate(llm, text)
        with chain(llm, tfs_z=z) as c:
            kept = c.apply(logits)
        assert c.names == ["tail-free", "dist"]
        expected = reference_tfs_count(logits, z)
        assert kept.ids.shape[0] == expected
        # the survivors are the most likely tokens, most likely first
        assert set(kept.ids) == set(np.argsort(-logits)[:expected])
        assert kept.selected in set(kept.ids)


def test_tfs_cuts_the_tail_and_z_1_keeps_everything(llm: L.Llama) -> None:
    _, logits = evaluate(llm, PROMPTS[0])
    with chain(llm, tfs_z=1.0) as off, chain(llm, tfs_z=0.9) as on, chain(llm, tfs_z=0.5) as hard:
        n_off, n_on, n_hard = (c.apply(logits).ids.shape[0] for c in (off, on, hard))
    assert "tail-free" not in off.names
    assert n_off == llm.n_vocab()
    assert 1 <= n_hard <= n_on < n_off


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("z", [0.85, 0.9, 0.95])
def test_tfs_on_a_262k_vocabulary_matches_the_full_algorithm(seed: int, z: float) -> None:
    logits = lm_like_logits(seed)
    keep = tail_free_keep(logits, z)
    assert keep is not None
    assert keep.shape[0] == reference_tfs_count(logits, z)
    assert np.all(np.diff(logits[keep]) <= 0)  # most likely first


def test_tfs_on_a_flat_262k_vocabulary_falls_back_to_the_full_sort() -> None:
    logits = np.random.default_rng(7).standard_normal(262_144).astype(np.float32) * 0.1
    keep = tail_free_keep(logits, 0.9)
    assert keep is not None and keep.shape[0] == reference_tfs_count(logits, 0.9)


def test_tfs_inside_llama_sampler_sample_only_picks_kept_tokens(llm: L.Llama) -> None:
    _, logits = evaluate(llm, PROMPTS[1])
    allowed = set(np.argsort(-logits)[: reference_tfs_count(logits, 0.6)])
    picks = set()
    for seed in range(30):
        with chain(llm, tfs_z=0.6, temperature=1.5, seed=seed) as c:
            picks.add(c.sample(llm))
            assert c.error is None
    assert picks <= allowed


# --- repetition penalty over the chat history -------------------------------------------------


def test_penalty_over_the_prompt_history_changes_the_greedy_pick(llm: L.Llama) -> None:
    tokens, logits = evaluate(llm, PROMPTS[2])
    top = int(np.argmax(logits))
    with chain(llm, temperature=0.0) as plain:
        assert plain.sample(llm) == top
    history = [t for t in tokens if t != top] + [top]
    with chain(llm, history, temperature=0.0, repeat_penalty=50.0, repeat_last_n=64) as c:
        assert c.names == ["penalties", "greedy"]
        assert c.sample(llm) != top


def test_penalty_range_counts_tokens_of_context_not_of_the_reply(llm: L.Llama) -> None:
    _, logits = evaluate(llm, PROMPTS[3])
    top = int(np.argmax(logits))
    filler = [t for t in range(300, 400) if t != top]  # 99 other tokens after the top one
    history = [top, *filler]
    with chain(llm, history, temperature=0.0, repeat_penalty=50.0, repeat_last_n=64) as short:
        assert short.sample(llm) == top  # 99 tokens back: outside a range of 64
    with chain(llm, history, temperature=0.0, repeat_penalty=50.0, repeat_last_n=128) as long:
        assert long.sample(llm) != top
    with chain(llm, history, temperature=0.0, repeat_penalty=50.0, repeat_last_n=-1) as whole:
        assert whole.sample(llm) != top


def test_penalty_matches_llama_cpp_rule_on_real_logits(llm: L.Llama) -> None:
    _, logits = evaluate(llm, PROMPTS[0])
    seen = [int(i) for i in np.argsort(-logits)[:3]] + [int(np.argmin(logits))]
    with chain(llm, seen, repeat_penalty=1.11, repeat_last_n=2048, frequency_penalty=0.1) as c:
        out = c.apply(logits)
    by_id = dict(zip(out.ids.tolist(), out.logits.tolist()))
    for t in seen:
        before = float(logits[t])
        expected = (before / 1.11 if before > 0 else before * 1.11) - 0.1
        assert by_id[t] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    untouched = int(np.argsort(-logits)[10])
    assert by_id[untouched] == pytest.approx(float(logits[untouched]))


def apply_sampler(sampler: object, logits: np.ndarray, shuffle: bool = False) -> dict[int, float]:
    """Apply one C sampler to a fresh candidate array; token id -> logit afterwards."""
    ids = np.arange(logits.shape[0], dtype=np.int32)
    if shuffle:
        ids = np.random.default_rng(0).permutation(ids).astype(np.int32)
    buf = (L.llama_token_data * logits.shape[0])()
    data = np.frombuffer(memoryview(buf), TOKEN_DATA)
    data["id"], data["logit"] = ids, logits[ids]
    cur_p = L.llama_token_data_array(data=buf, size=logits.shape[0], selected=-1, sorted=False)
    L.llama_sampler_apply(sampler, ctypes.byref(cur_p))
    return dict(zip(data["id"].tolist(), data["logit"].tolist()))


@pytest.mark.parametrize("shuffle", [False, True])
def test_numpy_penalties_equal_llama_cpp_penalties_as_the_window_slides(shuffle: bool) -> None:
    n = 262_144
    logits = lm_like_logits(11, n)
    rng = np.random.default_rng(5)
    ours = PenaltySampler(n, 64, 1.11, 0.05, 0.2)
    theirs = L.llama_sampler_init_penalties(n, 64, 1.11, 0.05, 0.2)
    hot = np.argsort(-logits)[:50]  # repeat likely tokens, so positive and negative logits both occur
    stream = np.concatenate([rng.choice(hot, 150), rng.integers(0, n, 150)]).tolist()
    stream += np.argsort(logits)[:20].tolist()  # the most negative logits too
    try:
        for i, token in enumerate(stream):
            L.llama_sampler_accept(ours.sampler, token)
            L.llama_sampler_accept(theirs, token)
            if i % 47 == 0 or i == len(stream) - 1:
                assert apply_sampler(ours.sampler, logits, shuffle) == apply_sampler(theirs, logits, shuffle)
        assert ours.error is None
    finally:
        L.llama_sampler_free(ours.sampler)
        L.llama_sampler_free(theirs)


# --- the other samplers ------------------------------------------------------------------------


def test_top_k_keeps_the_k_most_likely(llm: L.Llama) -> None:
    _, logits = evaluate(llm, PROMPTS[0])
    with chain(llm, top_k=5) as c:
        out = c.apply(logits)
    assert set(out.ids) == set(np.argsort(-logits)[:5])


def test_min_p_drops_tokens_below_the_fraction_of_the_top(llm: L.Llama) -> None:
    _, logits = evaluate(llm, PROMPTS[1])
    p = softmax(logits)
    with chain(llm, min_p=0.05) as c:
        out = c.apply(logits)
    assert set(out.ids) == set(np.flatnonzero(p >= 0.05 * p.max()))
    assert 1 < out.ids.shape[0] < logits.shape[0]


def test_top_p_keeps_the_smallest_nucleus(llm: L.Llama) -> None:
    _, logits = evaluate(llm, PROMPTS[2])
    p = softmax(logits)
    order = np.argsort(-p)
    n = int(np.searchsorted(np.cumsum(p[order]), 0.8)) + 1
    with chain(llm, top_p=0.8) as c:
        out = c.apply(logits)
    assert set(out.ids) == set(order[:n])


def test_temperature_reshapes_the_distribution(llm: L.Llama) -> None:
    _, logits = evaluate(llm, PROMPTS[3])
    for t in (0.5, 2.0):
        with chain(llm, temperature=t) as c:
            out = c.apply(logits)
        assert c.names == ["temp", "dist"]
        got = np.zeros(logits.shape[0])
        got[out.ids] = out.probs
        np.testing.assert_allclose(got, softmax(logits / t), atol=1e-5)


def test_greedy_picks_the_top_token(llm: L.Llama) -> None:
    _, logits = evaluate(llm, PROMPTS[0])
    with chain(llm, temperature=0.0, top_k=3, tfs_z=0.5) as c:
        assert c.names == ["greedy"]
        assert c.apply(logits).selected == int(np.argmax(logits))


def test_typical_p_narrows_the_choice(llm: L.Llama) -> None:
    _, logits = evaluate(llm, PROMPTS[1])
    with chain(llm, typical_p=0.5) as c:
        out = c.apply(logits)
    assert 1 <= out.ids.shape[0] < logits.shape[0] // 2


def test_xtc_excludes_the_top_choices() -> None:
    logits = np.full(512, -5.0, dtype=np.float32)
    logits[[10, 11, 12]] = [5.0, 4.9, 4.8]  # three tokens above the 0.1 threshold
    with SamplerChain(None, None, Sampling(xtc_probability=1.0, xtc_threshold=0.1), n_vocab=512) as c:
        out = c.apply(logits)
    assert c.names == ["xtc", "dist"]
    assert 10 not in out.ids and 11 not in out.ids and 12 in out.ids
    assert out.selected not in (10, 11)


def test_dry_penalizes_continuing_a_repeated_sequence(llm: L.Llama) -> None:
    words = list(dict.fromkeys(llm.tokenize(b"Hello world you and to of", add_bos=False)))[:5]
    assert len(words) == 5 and not set(words) & set(llm.tokenize(b'\n:"*', add_bos=False))
    history = words + [token_id("▁the")] + words[:3]  # "A B C D E the A B C" -> D is penalized
    _, logits = evaluate(llm, PROMPTS[0])
    settings = {"dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2, "dry_penalty_last_n": -1}
    with chain(llm, history, **settings) as c:  # type: ignore[arg-type]
        out = c.apply(logits)
    assert c.names == ["dry", "dist"]
    by_id = dict(zip(out.ids.tolist(), out.logits.tolist()))
    # a 3-token match with 2 allowed: penalty = 0.8 * 1.75 ** (3 - 2)
    assert by_id[words[3]] == pytest.approx(float(logits[words[3]]) - 0.8 * 1.75, abs=1e-4)
    assert by_id[words[4]] == pytest.approx(float(logits[words[4]]))


def test_dry_from_the_prototype_cache_keeps_the_sequence_breakers(llm: L.Llama) -> None:
    words = list(dict.fromkeys(llm.tokenize(b"Hello world you and to of", add_bos=False)))[:5]
    newline = llm.tokenize(b"\n", add_bos=False)[-1]
    a, b, c, d, e = words
    history = [a, newline, b, c, d, e, a, newline, b, c]  # the match may not reach back across "\n"
    _, logits = evaluate(llm, PROMPTS[1])
    settings = Sampling(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=1, dry_penalty_last_n=64)
    breakers = (ctypes.c_char_p * 4)(b"\n", b":", b'"', b"*")
    direct = L.llama_sampler_init_dry(L.llama_model_get_vocab(llm.model), 0.8, 1.75, 1, 64, breakers, 4)
    try:
        for token in history:
            L.llama_sampler_accept(direct, token)
        expected = apply_sampler(direct, logits)
    finally:
        L.llama_sampler_free(direct)
    for _ in range(2):  # the first builds the prototype, the second clones it
        with SamplerChain(llm.model, llm.ctx, settings, history) as chain_:
            out = chain_.apply(logits)
        assert dict(zip(out.ids.tolist(), out.logits.tolist())) == expected
    assert expected[d] == pytest.approx(float(logits[d]) - 0.8 * 1.75)  # "b c" matched, not more


def test_mirostat_and_dynamic_temperature_build_and_sample(llm: L.Llama) -> None:
    evaluate(llm, PROMPTS[0])
    for settings, name in (({"mirostat": 2}, "mirostat-v2"), ({"mirostat": 1}, "mirostat"),
                           ({"dynatemp_range": 0.5, "temperature": 1.2}, "temp-ext")):
        with chain(llm, **settings) as c:  # type: ignore[arg-type]
            assert name in c.names
            assert 0 <= c.sample(llm) < llm.n_vocab()


def test_order_follows_llama_cpp_and_temperature_first_moves_it(llm: L.Llama) -> None:
    every = {"repeat_penalty": 1.1, "dry_multiplier": 0.8, "top_k": 40, "tfs_z": 0.9, "typical_p": 0.9,
             "top_p": 0.9, "min_p": 0.05, "xtc_probability": 0.5, "temperature": 0.8}
    with chain(llm, **every) as c:  # type: ignore[arg-type]
        assert c.names == ["penalties", "dry", "top-k", "tail-free", "typical", "top-p", "min-p",
                           "xtc", "temp", "dist"]
    with chain(llm, temperature_last=False, **every) as c:  # type: ignore[arg-type]
        assert c.names[2] == "temp" and c.names[-1] == "dist"


# --- seeds -------------------------------------------------------------------------------------


def generate(llm: L.Llama, sampling: Sampling, n: int = 12) -> list[int]:
    tokens, _ = evaluate(llm, PROMPTS[0])
    out = []
    with SamplerChain(llm.model, llm.ctx, sampling, tokens) as c:
        for _ in range(n):
            token = c.sample(llm)
            out.append(token)
            llm.eval([token])
    return out


def test_same_seed_gives_the_same_reply(llm: L.Llama) -> None:
    s = Sampling(temperature=1.5, seed=1234, repeat_penalty=1.1, tfs_z=0.95)
    assert generate(llm, s) == generate(llm, s)


def test_no_seed_gives_a_new_seed_per_request(llm: L.Llama) -> None:
    s = Sampling(temperature=1.5)
    seeds = set()
    for _ in range(4):
        with SamplerChain(llm.model, llm.ctx, s) as c:
            seeds.add(c.seed)
    assert len(seeds) == 4
    replies = {tuple(generate(llm, s)) for _ in range(4)}
    assert len(replies) > 1


def test_seed_minus_one_is_random_and_big_seeds_still_fix_the_reply(llm: L.Llama) -> None:
    seeds = {SamplerChain(llm.model, llm.ctx, Sampling(seed=-1)).seed for _ in range(3)}
    assert len(seeds) == 3
    big = SamplerChain(llm.model, llm.ctx, Sampling(seed=2**40 + 5))
    assert 0 <= big.seed < 2**32 - 1 and big.seed == SamplerChain(llm.model, llm.ctx, Sampling(seed=2**40 + 5)).seed


# --- lifecycle and presets -----------------------------------------------------------------------


def test_close_is_idempotent_and_a_closed_chain_refuses_to_sample(llm: L.Llama) -> None:
    c = chain(llm, tfs_z=0.9)
    c.close()
    c.close()
    with pytest.raises(EngineError):
        c.sample(llm)


def test_chain_without_model_needs_n_vocab() -> None:
    with pytest.raises(EngineError):
        SamplerChain(None, None, Sampling())
    with pytest.raises(EngineError, match="DRY"):
        SamplerChain(None, None, Sampling(dry_multiplier=0.8), n_vocab=10)


def test_every_shipped_preset_samples_on_a_real_model(llm: L.Llama) -> None:
    tokens, _ = evaluate(llm, PROMPTS[1])
    for preset in list_presets():
        with SamplerChain(llm.model, llm.ctx, preset.sampling, tokens) as c:
            assert 0 <= c.sample(llm) < llm.n_vocab(), preset.name
            assert c.error is None


def test_token_view_reads_a_chain_result_in_place() -> None:
    logits = lm_like_logits(3)
    with SamplerChain(None, None, Sampling(tfs_z=0.9, temperature=0.7), n_vocab=logits.shape[0]) as c:
        out = c.apply(logits)
    assert out.ids.shape[0] == reference_tfs_count(logits, 0.9)
    assert abs(float(out.probs.sum()) - 1.0) < 1e-4
    assert ctypes.sizeof(L.llama_token_data) == 12


# --- the real demo model (Gemma 3 270M, 262k vocabulary) ------------------------------------------


@pytest.fixture(scope="module")
def gemma(demo_model: Path) -> Iterator[tuple[object, object, list[int]]]:
    """The demo model with a prompt evaluated; weight repacking off (AMX faults on build machines)."""
    mparams = L.llama_model_default_params()
    mparams.use_extra_bufts = False
    model = L.llama_model_load_from_file(str(demo_model).encode(), mparams)
    assert model
    cparams = L.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_threads, cparams.n_threads_batch = 512, 512, 2, 2
    ctx = L.llama_init_from_model(model, cparams)
    text = b"### Input:\nTheo: Where am I?\n\n### Response: (length = medium)\nMarisol: *She smiles.* \""
    buf = (L.llama_token * 128)()
    n = L.llama_tokenize(L.llama_model_get_vocab(model), text, len(text), buf, 128, True, False)
    tokens = list(buf[:n])
    assert L.llama_decode(ctx, L.llama_batch_get_one(buf, n)) == 0
    yield model, ctx, tokens
    L.llama_free(ctx)
    L.llama_model_free(model)



def test_tfs_and_penalty_on_the_real_262k_vocabulary(gemma: tuple[object, object, list[int]]) -> None:
    model, ctx, tokens = gemma
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()
    assert n_vocab == 262_144
    for z in (0.85, 0.9, 0.95):
        with SamplerChain(model, ctx, Sampling(tfs_z=z)) as c:
            assert c.apply(logits).ids.shape[0] == reference_tfs_count(logits, z)
    allowed = set(np.argsort(-logits)[: reference_tfs_count(logits, 0.9)].tolist())
    for seed in range(5):
        with SamplerChain(model, ctx, Sampling(tfs_z=0.9, temperature=0.7, seed=seed), tokens) as c:
            assert c.sample(ctx) in allowed
    top = int(np.argmax(logits))
    with SamplerChain(model, ctx, Sampling(temperature=0.0, repeat_penalty=1e3), [*tokens, top]) as c:
        assert c.sample(ctx) != top
    with SamplerChain(model, ctx, Sampling(temperature=0.0), tokens) as c:
        assert c.sample(ctx) == top
