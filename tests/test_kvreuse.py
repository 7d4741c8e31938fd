"""Planning KV-cache reuse (rpchat.engine.kvreuse) when old turns fall out of the prompt."""

from __future__ import annotations

from rpchat.engine.kvreuse import ANCHOR, plan_reuse


def test_a_repeated_line_does_not_hide_the_span_that_survived() -> None:
    # A chat that repeats a line (a header and a short message, e.g. "*nods*"): the anchor after the cut
    # occurs several times in the cache, first inside the span that was cut. The plan must shift the long
    # surviving run, not the first short match (found with the bench's 3,000-token chat at 7B shape: 26
    # tokens shifted and 2,318 of 2,508 re-read).
    instruction = list(range(1000, 1040))
    line = list(range(2000, 2000 + ANCHOR + 4))  # the repeated turn
    cut = [*range(3000, 3100), *line, *range(3100, 3110), *line, 9]  # old turns, repeating the line
    kept = [*line, *range(4000, 4600)]  # the first kept turn is that same line
    cache = [*instruction, *cut, *kept, 7, 7, 7]
    prompt = [*instruction, *kept, 5, 5]
    plan = plan_reuse(cache, prompt, can_shift=True)
    assert plan.keep == len(instruction)
    assert plan.span_start == len(instruction) + len(cut)
    assert plan.reused == len(instruction) + len(kept)  # only the new tokens are evaluated


def test_without_shifting_only_the_common_prefix_is_kept() -> None:
    cache = [*range(100), *range(500, 600)]
    prompt = [*range(100), *range(550, 600), 1]
    assert plan_reuse(cache, prompt, can_shift=False).reused == 100
