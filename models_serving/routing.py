"""Choosing a replica of an endpoint: least outstanding streams, skipping unhealthy replicas."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence


def replica_list(base_url: str, replica_urls: Iterable[str] = ()) -> list[str]:
    """The endpoint's base URLs in order, primary first, blanks and duplicates dropped."""
    seen: list[str] = []
    for url in (base_url, *replica_urls):
        url = url.strip() if isinstance(url, str) else ""
        if url and url not in seen:
            seen.append(url)
    return seen


def choose_replica(
    urls: Sequence[str],
    outstanding: Mapping[str, int],
    unhealthy: Collection[str] = frozenset(),
    exclude: Collection[str] = frozenset(),
) -> str | None:
    """Pick the healthy replica with the fewest outstanding streams (ties go to the earlier URL).

    `exclude` holds replicas already tried for this request; they are never chosen again. When
    every remaining replica is marked unhealthy the least outstanding of them is chosen anyway: a
    mark may be stale (a cool-down, a health check minutes old), and trying costs one connect
    timeout where refusing would fail the turn for certain. None only when nothing remains.
    """
    remaining = [u for u in urls if u not in exclude]
    healthy = [u for u in remaining if u not in unhealthy]
    pool = healthy or remaining
    if not pool:
        return None
    return min(pool, key=lambda u: (outstanding.get(u, 0), remaining.index(u)))
