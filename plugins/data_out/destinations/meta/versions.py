"""Meta Marketing API versions: the one place the default version and Meta's expiry dates live.

Meta retires a Marketing API version about a year after release; from its expiration date every call to
it answers error #2635 ("You are calling a deprecated version of the Ads API"). The default follows
the pinned ``facebook-business`` SDK (26.0.3 defaults to v26.0), and a test fails once the default is
past its expiry here, so it is moved before Meta retires it rather than after every sync fails.
"""

from __future__ import annotations

import datetime as dt

#: the version every Meta call uses unless an audience names another
DEFAULT_API_VERSION = "v26.0"

#: expiration dates from Meta's "Marketing API version history" table
#: (developers.facebook.com/documentation/ads-commerce/marketing-api/marketing-api-changelog/versions);
#: ``None`` where Meta lists "TBD". Add each new version, with its date once Meta publishes it.
EXPIRES: dict[str, dt.date | None] = {
    "v21.0": dt.date(2025, 9, 9),
    "v22.0": dt.date(2026, 2, 19),
    "v23.0": dt.date(2026, 6, 9),
    "v24.0": dt.date(2026, 11, 10),
    "v25.0": dt.date(2027, 2, 23),
    "v26.0": None,
    "v27.0": None,
}


def expired(version: str, today: dt.date | None = None) -> bool:
    """Whether Meta has retired ``version`` by ``today``: a version older than any listed here is too."""
    today = today or dt.date.today()
    if version in EXPIRES:
        until = EXPIRES[version]
        return until is not None and today >= until
    return _number(version) < min(_number(v) for v in EXPIRES)


def _number(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.lstrip("v").split("."))


def current(today: dt.date | None = None) -> list[str]:
    """Versions Meta still serves on ``today``, oldest first (for error messages)."""
    return sorted((v for v in EXPIRES if not expired(v, today)), key=_number)
