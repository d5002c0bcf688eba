"""Sync modes: one enum, and a trigger's conf that names a mode is checked against the allowed ones."""

from __future__ import annotations

import pytest

from data_out.errors import ConfigurationError, next_step_of
from data_out.modes import TRIGGER_MODES, InvalidMode, SyncMode, parse_mode


@pytest.mark.parametrize("given", ["incremental", "full_resync", "replace"])
def test_a_trigger_may_ask_for_each_documented_mode(given):
    mode = parse_mode(given)
    assert mode is SyncMode(given) and mode == given  # a str: do_sync.mode and XCom keep the plain value


@pytest.mark.parametrize("given", [None, ""])
def test_no_mode_means_incremental(given):
    assert parse_mode(given) is SyncMode.INCREMENTAL


@pytest.mark.parametrize("given", ["yolo", "retire", "Incremental", 3])
def test_an_unknown_mode_is_refused_naming_the_allowed_values(given):
    with pytest.raises(InvalidMode) as refused:
        parse_mode(given)
    assert str(refused.value) == f"mode {given!r} is not one of incremental, full_resync, replace"
    assert isinstance(refused.value, ConfigurationError) and not refused.value.retryable
    assert "conf" in next_step_of(refused.value)


def test_retire_is_a_mode_of_the_lifecycle_not_of_a_trigger():
    assert SyncMode.RETIRE not in TRIGGER_MODES and set(TRIGGER_MODES) | {SyncMode.RETIRE} == set(SyncMode)
