"""TikTok's Marketing API answers: which codes to retry, and what to tell a person."""

from __future__ import annotations

import requests

from data_out.destinations.http import Verdict, default_classify

RETRY_CODES = {40100, 40016}


def _code(resp: requests.Response) -> int | None:
    try:
        return int(resp.json().get("code"))
    except (ValueError, TypeError, AttributeError):
        return None


def classify(resp: requests.Response) -> Verdict:
    if resp.status_code >= 300:
        return default_classify(resp)
    code = _code(resp)
    if code == 0:
        return Verdict.OK
    return Verdict.RETRY if code in RETRY_CODES or (code or 0) >= 50000 else Verdict.FATAL


def describe(resp: requests.Response) -> str:
    try:
        body = resp.json()
        return f"code {body.get('code')}: {body.get('message')}"
    except ValueError:
        return resp.text[:300]
