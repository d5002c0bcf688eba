"""The Segment connection type: the write key as Basic auth user."""

from __future__ import annotations

import requests

from data_out.connection_types import kind
from data_out.destinations.http_hook import RETRY_EXTRAS, DataOutHttpHook


class SegmentHook(DataOutHttpHook):
    conn_type = default_conn_name = kind("segment").conn_type
    hook_name = "Data Out: Segment"
    vendor = "segment"
    host_placeholder = "https://api.segment.io"
    password_label = "Write key"
    extra_placeholders = RETRY_EXTRAS

    def authorise(self, session: requests.Session) -> None:
        session.auth = (self.info.password or "", "")  # Segment: the write key as Basic auth user

    def test_connection(self) -> tuple[bool, str]:
        """Segment's Tracking API has no call that reads, and it answers 200 to a write key it does not
        know: the only test is an event, which would land in the source. So the button says so."""
        problem = "" if (self.info.password or "").strip() else " The connection has no write key (password)."
        return False, (
            "segment: cannot be tested without sending an event: Segment's Tracking API has no read call and "
            "accepts events for any write key. Check the write key in Segment (Connections > Sources > the source "
            f"> Settings > API Keys) and watch the source's debugger after the first sync.{problem}"
        )
