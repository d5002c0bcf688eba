"""What Google's APIs answer on an error, as a sentence a person can act on."""

from __future__ import annotations

import requests


def describe_google_error(resp: requests.Response) -> str:
    """Google's ``{"error": {"status", "message", "details"}}``, or whatever else came back, without crashing."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return str(err if err is not None else body)[:300]
    reasons = [
        str(d["reason"]) for d in err.get("details", []) if isinstance(d, dict) and d.get("reason")
    ]  # ErrorInfo reasons name the cause (TERMS_AND_CONDITIONS_NOT_SIGNED, ...)
    fields = [
        v.get("field")
        for d in err.get("details", [])
        if isinstance(d, dict)
        for v in d.get("fieldViolations", [])
        if isinstance(v, dict)
    ]
    text = f"{err.get('status', '')}: {err.get('message', '')}"
    if reasons:
        text += f" [{', '.join(reasons)}]"
    if fields:
        text += f" (field {', '.join(f for f in fields if f)})"
    return text
