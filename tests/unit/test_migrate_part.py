"""`--part K/N`'s split: every tenant in exactly one share, and shares that hold still."""

from __future__ import annotations

import pytest

from db.migrations.fleet import Part

SLUGS = [f"studio-{i}" for i in range(2000)]


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_each_slug_is_in_exactly_one_share(count: int) -> None:
    parts = [Part(k, count) for k in range(1, count + 1)]
    for slug in SLUGS:
        assert sum(p.holds(slug) for p in parts) == 1
    sizes = [sum(p.holds(s) for s in SLUGS) for p in parts]
    assert min(sizes) > len(SLUGS) / count * 0.8  # roughly even


def test_one_more_share_moves_only_the_tenants_it_takes() -> None:
    moved = [s for s in SLUGS if Part.of(s, 4) != Part.of(s, 5)]
    assert all(Part.of(s, 5) == 5 for s in moved)
    assert len(moved) < len(SLUGS) / 5 * 1.25  # about a fifth, not most of them


@pytest.mark.parametrize(("index", "count"), [(0, 3), (4, 3), (1, 0)])
def test_a_share_outside_1_to_n_is_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="K/N"):
        Part(index, count)
