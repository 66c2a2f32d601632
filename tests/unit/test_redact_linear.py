"""Redaction cost grows linearly with the input, whatever the input (issue 9).

The property test builds adversarial prompts from the building blocks of ``bench.corpus`` and
checks that 8x the input costs at most 8x the time, with generous slack, so a regex that
backtracks (quadratic or worse) fails while a loaded machine does not. No absolute time budget.
"""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.corpus import BLOCKS, FAKE_KEY, SECRET_BLOCKS, adversarial_corpus, build
from soar.redact import redact

SMALL = 2 * 1024
FACTOR = 8
SLACK = 3.0
CONSTANT_S = 0.002
# Large enough that redact() examines the whole 16 KiB input (no windowing).
MAX_LEN = 1024


def _full(text: str) -> str:
    return redact(text, max_len=MAX_LEN)


def _best_of(text: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        _full(text)
        best = min(best, time.perf_counter() - start)
    return best


def _times(small: str, big: str) -> tuple[float, float]:
    # Interleave the runs so that a burst of load hits both sizes alike.
    t_small = t_big = float("inf")
    for _ in range(3):
        t_small = min(t_small, _best_of(small, 2))
        t_big = min(t_big, _best_of(big, 1))
    return t_small, t_big


blocks = st.lists(
    st.tuples(st.sampled_from(sorted(BLOCKS)), st.integers(min_value=1, max_value=50)),
    min_size=1,
    max_size=4,
)


@settings(
    deadline=None,
    max_examples=40,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(blocks)
def test_time_grows_linearly(parts: list[tuple[str, int]]) -> None:
    unit = [BLOCKS[name] * count for name, count in parts]
    small = build(unit, SMALL)
    big = build(unit, SMALL * FACTOR)
    t_small, t_big = _times(small, big)
    if t_big > FACTOR * t_small * SLACK + CONSTANT_S:
        # One retry before failing: a single descheduling must not fail the suite.
        t_small, t_big = _times(small, big)
    assert t_big <= FACTOR * t_small * SLACK + CONSTANT_S, (parts, t_small, t_big)


def test_every_corpus_entry_at_256_kib() -> None:
    corpus = adversarial_corpus(256 * 1024)
    assert set(BLOCKS) <= set(corpus)
    for name, text in corpus.items():
        for max_len in (160, 4096):
            out = redact(text, max_len=max_len)
            assert len(out) <= max_len, name
            if name in SECRET_BLOCKS:
                assert "[SECRET]" in out, (name, out[:200])
                for i in range(len(FAKE_KEY) - 8):
                    assert FAKE_KEY[i : i + 8] not in out, (name, out[:200])
                assert "\u200b" not in out
    # Fullwidth card numbers are normalised and masked.
    out = redact(corpus["fullwidth_digits"], max_len=4096)
    assert "[CARD]" in out and "4111 1111 1111 1111" not in out
    # Whitespace runs collapse to nothing.
    assert redact(corpus["whitespace"]) == "…"
