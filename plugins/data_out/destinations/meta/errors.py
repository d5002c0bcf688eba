"""Meta's Graph API error envelope: which answers to retry, and what to tell a person."""

from __future__ import annotations

import requests

from data_out.destinations.http import Verdict, default_classify

RATE_LIMIT_CODES = {4, 17, 32, 613, 80003, 80004}


TRANSIENT_CODES = {1, 2}


BLOCKED = (100, 1713230)


DEPRECATED_VERSION = 2635


def _error(resp: requests.Response) -> tuple[int | None, int | None, str]:
    try:
        body = resp.json()
    except ValueError:
        return None, None, resp.text[:300]
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):  # not Meta's envelope: a proxy or a load balancer answered
        return None, None, resp.text[:300]
    return err.get("code"), err.get("error_subcode"), str(err.get("message", ""))


def classify(resp: requests.Response) -> Verdict:
    if resp.status_code < 300:
        return Verdict.OK
    code, _, _ = _error(resp)
    if code in RATE_LIMIT_CODES or code in TRANSIENT_CODES:
        return Verdict.RETRY
    return default_classify(resp)


def describe(resp: requests.Response) -> str:
    code, subcode, message = _error(resp)
    if (code, subcode) == BLOCKED:
        return (
            f"the custom audience is blocked from updates (code {code}, subcode {subcode}): {message}. "
            "Check it in Ads Manager; nothing was changed"
        )
    if code == 190:
        return f"the access token was refused (code 190): {message}. Renew the token in the connection"
    if code == DEPRECATED_VERSION:
        return f"Meta retired this Marketing API version (code 2635): {message}. Set a current api_version"
    if code == 100 and "appsecret_proof" in message:
        return (
            f"the app requires appsecret_proof (code 100): {message}. Put the app's secret in the "
            "connection's extra as app_secret"
        )
    return f"code {code}" + (f" (subcode {subcode})" if subcode else "") + f": {message}"
