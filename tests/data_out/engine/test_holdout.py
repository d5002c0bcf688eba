"""Holdout buckets are deterministic, stable and close to the configured share."""

from __future__ import annotations

from data_out.engine.holdout import BUCKETS, bucket_for, holdout_threshold, is_held_out


def test_bucket_is_a_pure_function_of_salt_and_key():
    assert bucket_for("s1", "c42") == bucket_for("s1", "c42")
    assert 0 <= bucket_for("s1", "c42") < BUCKETS
    assert [bucket_for("s1", f"c{i}") for i in range(50)] != [bucket_for("s2", f"c{i}") for i in range(50)]


def test_share_is_close_to_the_percent():
    held = sum(is_held_out("salt", f"c{i}", 10) for i in range(100_000))
    assert 9_500 < held < 10_500


def test_membership_does_not_depend_on_who_else_is_in_the_audience():
    small = {f"c{i}" for i in range(1_000) if is_held_out("salt", f"c{i}", 15)}
    large = {f"c{i}" for i in range(5_000) if is_held_out("salt", f"c{i}", 15)}
    assert small == {k for k in large if int(k[1:]) < 1_000}


def test_raising_the_percent_only_adds_to_the_holdout():
    five = {f"c{i}" for i in range(5_000) if is_held_out("salt", f"c{i}", 5)}
    ten = {f"c{i}" for i in range(5_000) if is_held_out("salt", f"c{i}", 10)}
    assert five < ten


def test_threshold_edges():
    assert holdout_threshold(0) == 0
    assert holdout_threshold(50) == BUCKETS // 2
    assert holdout_threshold(0.01) == 1
