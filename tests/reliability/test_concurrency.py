"""Two audiences sharing a destination sync in parallel; two runs of one audience cannot both start."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from data_out.config import load_audiences
from data_out.connections import ConnectionInfo, engine_for
from data_out.engine.lease import LeaseHeld
from data_out.engine.runner import AudienceRunner
from sandbox.standins.base import Running
from sandbox.standins.meta import MetaStandIn
from tests.conftest import People, write_audience

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def test_audiences_sharing_a_destination_run_in_parallel(backend, state_engine, tmp_path):
    people = People(engine_for(backend))
    people.set([{"customer_id": f"c{i:03d}", "email": f"p{i}@example.com", "bought": i % 2} for i in range(80)])
    for name, cond, aud_id in (("par_a_v1", "bought = 0", "111"), ("par_b_v1", "bought = 1", "222")):
        write_audience(
            tmp_path / "aud",
            name,
            f"""
            name: {name}
            owner: tests
            purpose: parallel
            source: {{conn_id: db, query: "SELECT customer_id, email, phone FROM people WHERE {cond}"}}
            destinations: [{{type: meta, audience_id: "{aud_id}", batch_size: 5}}]
        """,
        )
    standin = MetaStandIn()
    with Running(standin) as running:
        meta = ConnectionInfo("m", "data_out_meta", host=running.url, password="meta-test-token")
        audiences = load_audiences(tmp_path / "aud")
        errors: list[BaseException] = []

        def sync(name: str) -> None:
            try:
                AudienceRunner(state_engine, audiences, name, lambda c: backend if c == "db" else meta).run(
                    f"dag/{name}", AS_OF
                )
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=sync, args=(n,)) for n in ("par_a_v1", "par_b_v1")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert errors == []
    assert len(standin.audiences["111"]) == 40 and len(standin.audiences["222"]) == 40
    assert max(standin.applied.values()) == 1


def test_a_second_trigger_of_the_same_audience_is_refused_while_the_first_runs(
    audiences_dir, resolver, state_engine, people, store
):
    people.set([{"customer_id": "c1", "email": "a@example.com"}])
    runner = AudienceRunner(state_engine, load_audiences(audiences_dir), "test_targets_v1", resolver)
    first = runner.start("dag/run-1", AS_OF)
    with pytest.raises(LeaseHeld, match="run-1"):
        runner.start("dag/run-2", AS_OF)
    runner.stage(first, "dag/run-1")
    runner.finish(first, "dag/run-1", expected=[])
    runner.run("dag/run-2", AS_OF)  # free again once the first finished
