"""The Customer.io source reports transport failures as ``SourceError``s that quote no key or URL."""

from __future__ import annotations

import traceback

import pytest

from data_out.connections import ConnectionInfo
from data_out.sources.base import SourceError
from data_out.sources.customerio import CustomerIOSource
from tests.support.recorder import Answer, recording

KEY = "cio-app-key-0c1d2e3f"


def _source(url: str, key: str) -> CustomerIOSource:
    conn = ConnectionInfo(
        "data_out_customerio", "data_out_customerio", host=url, password=key, extra={"max_attempts": 2}
    )
    return CustomerIOSource(conn, segment_id=7, page_size=100, label="cio_v1")


def _printed(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def test_a_key_with_a_line_break_fails_the_stage_without_quoting_it():
    with recording(lambda seen: Answer(200, {"count": 0})) as api:
        source = _source(api.url, f"{KEY}\r\nX-Other: 1")
        with pytest.raises(SourceError) as failed:
            list(source.iter_batches(100))
    assert api.seen == []  # refused before anything was sent
    assert "header value is not valid" in str(failed.value)
    assert KEY not in _printed(failed.value)


def test_a_redirect_loop_fails_the_stage_clearly():
    loop = Answer(302, headers={"Location": f"/loop?api_key={KEY}"})
    with recording(lambda seen: loop) as api, pytest.raises(SourceError) as failed:
        list(_source(api.url, KEY).iter_batches(100))
    assert "too many redirects" in str(failed.value)
    assert KEY not in _printed(failed.value)
