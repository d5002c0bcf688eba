"""The warehouse destination's contract on SQLite, Postgres, MariaDB and DuckDB: adds, removes, the
holdout table, replays that are no-ops, and a size that counts what is there."""

from __future__ import annotations

from sqlalchemy import select, text

from data_out.connections import ConnectionInfo, engine_for
from data_out.destinations.base import MemberRow, Op
from data_out.destinations.warehouse.destination import WarehouseDestination
from data_out.destinations.warehouse.settings import WarehouseSettings


def _row(key: str, holdout: bool = False) -> MemberRow:
    return MemberRow(key, None, None, None, None, holdout)


def _dest(info: ConnectionInfo, **settings: object) -> WarehouseDestination:
    return WarehouseDestination("aud_v1", WarehouseSettings(type="warehouse", **settings), info)


def _keys(dest: WarehouseDestination, holdout: bool = False) -> list[str]:
    table = dest.holdout if holdout else dest.members
    with dest.engine.connect() as conn:
        return sorted(conn.scalars(select(table.c.member_key)))


def test_adds_removes_and_the_holdout_table(warehouse: ConnectionInfo) -> None:
    dest = _dest(warehouse)
    rows = [_row(f"k{i:03d}", holdout=i % 5 == 0) for i in range(40)]
    assert dest.push(Op.ADD, rows, "batch-1").received == 40
    assert _keys(dest) == sorted(r.member_key for r in rows if not r.in_holdout)
    assert _keys(dest, holdout=True) == ["k000", "k005", "k010", "k015", "k020", "k025", "k030", "k035"]
    assert dest.size() == 40
    dest.push(Op.REMOVE, [_row("k001"), _row("k005", holdout=True), _row("never")], "batch-2")
    assert "k001" not in _keys(dest) and "k005" not in _keys(dest, holdout=True)
    assert dest.size() == 38


def test_a_replayed_batch_is_not_applied_twice(warehouse: ConnectionInfo) -> None:
    dest = _dest(warehouse)
    dest.push(Op.ADD, [_row("a"), _row("b")], "add-1")
    dest.push(Op.REMOVE, [_row("a")], "remove-1")
    replay = dest.push(Op.ADD, [_row("a"), _row("b")], "add-1")  # the first add again, after the remove
    assert not replay.received  # acknowledged, not applied
    assert _keys(dest) == ["b"]  # the removal is not lost
    # an add of a member already there (a new batch) is harmless: set semantics, no duplicate, no error
    dest.push(Op.ADD, [_row("b"), _row("c")], "add-2")
    assert _keys(dest) == ["b", "c"]
    with dest.engine.connect() as conn:
        applied = conn.execute(text("SELECT count(*) FROM data_out_applied_batches")).scalar()
    assert applied == 3


def test_named_tables_and_a_second_instance_on_existing_tables(warehouse: ConnectionInfo) -> None:
    _dest(warehouse, table="retention_members", include="targeted").push(Op.ADD, [_row("x")], "t-1")
    again = _dest(warehouse, table="retention_members", include="targeted")  # tables exist: no DDL error
    again.push(Op.ADD, [_row("y", holdout=True)], "t-2")
    assert _keys(again) == ["x", "y"]  # include=targeted: the holdout flag does not route here
    with engine_for(warehouse).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM retention_members")).scalar() == 2
