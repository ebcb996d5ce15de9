"""Replica choice: least outstanding, ties by order, unhealthy skipped unless nothing else is."""

from models_serving.routing import choose_replica, replica_list

A, B, C = "http://a/v1", "http://b/v1", "http://c/v1"


def test_it_picks_the_replica_with_the_fewest_outstanding_streams():
    assert choose_replica([A, B, C], {A: 3, B: 1, C: 2}, set()) == B


def test_ties_go_to_the_earlier_url():
    assert choose_replica([A, B], {}, set()) == A
    assert choose_replica([A, B, C], {A: 2, B: 1, C: 1}, set()) == B


def test_it_skips_an_unhealthy_replica_even_when_it_is_idle():
    assert choose_replica([A, B], {B: 5}, {A}) == B


def test_when_every_replica_is_unhealthy_it_falls_back_to_the_least_outstanding():
    assert choose_replica([A, B], {A: 2, B: 1}, {A, B}) == B


def test_it_never_returns_an_excluded_replica_and_none_once_all_were_tried():
    assert choose_replica([A, B], {}, {B}, exclude={A}) == B
    assert choose_replica([A, B], {}, set(), exclude={A, B}) is None
    assert choose_replica([], {}, set()) is None


def test_the_replica_list_puts_the_primary_first_and_drops_blanks_and_duplicates():
    assert replica_list(A, [B, "", A, " ", C, B]) == [A, B, C]
