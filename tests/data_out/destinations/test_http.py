"""The shared HTTP transport's form encoding: byte for byte what ``requests`` would send for ``data=``."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlencode

from hypothesis import given
from hypothesis import strategies as st

from data_out.destinations.http import form_encode

fields = st.dictionaries(st.text(max_size=8), st.text(max_size=200), max_size=3)


@given(fields)
def test_form_encode_equals_urlencode(values: dict[str, str]):
    assert form_encode(values) == urlencode(values)


@given(st.lists(st.lists(st.text(max_size=40), max_size=3), max_size=20))
def test_a_json_payload_round_trips(rows: list[list[str]]):
    payload = json.dumps({"schema": ["EMAIL", "PHONE"], "data": rows}, separators=(",", ":"))
    body = form_encode({"payload": payload, "session": "{}"})
    assert body == urlencode({"payload": payload, "session": "{}"})
    assert json.loads(parse_qs(body)["payload"][0])["data"] == rows
