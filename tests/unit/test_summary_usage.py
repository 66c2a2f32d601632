"""The model summariser reads the provider's usage figures as counts, whatever they are."""

from __future__ import annotations


def test_a_providers_usage_figures_are_read_as_counts() -> None:
    """A usage field that is no count raised out of summarise() (which never raises), and a
    negative one gave the tenant's daily token budget back."""
    from soar.summaries.model import _token_count

    assert [_token_count(v) for v in ("lots", -5, 3.0, 3.5, float("nan"), True, None)] == [
        -1,
        -1,
        3,
        -1,
        -1,
        -1,
        0,
    ]
    assert _token_count(12) == 12 and _token_count(10**12) == 10_000_000
