"""Redaction of identifiers and secrets from third-party text: vendor error messages and database driver messages.

They are the one place text we did not write reaches our logs, run records and alert emails, so they
pass through ``scrub`` first: connection secrets read by this process become ``<secret>``, anything
that looks like an email address ``<email>``, anything that looks like a phone number ``<number>``.
A database driver's message gets more: only its first line is kept (Postgres' ``DETAIL`` line quotes
the failing row or key) and the values it quotes are masked (``driver_line``).

What "looks like" covers, because vendors and databases echo values in every form they were given:
Unicode local parts and internationalised domains (``иван@пример.рф``, punycode ``xn--``), full-width
and compatibility forms (``＠``, ``．``, full-width digits: the text is NFKC-normalised first),
percent-encoding (``%40``, ``%2540``, ``%2E``), HTML and JSON escapes of ``@``, and phone numbers with
spaces, dots, dashes (hyphen, en and em dash, minus sign), slashes and parentheses. Text that only
resembles a phone number is kept, since it is what a person needs to read the message: dates and
timestamps, UUIDs, IPv4 addresses, decimals, and plain numbers of fewer than ten or more than fifteen
digits (counts, batch numbers, status codes, long ids). Member keys look like anything: a caller that
knows which ones the text may quote passes them (``scrub(..., members=...)``).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import unicodedata
from collections.abc import Collection

from sqlalchemy.exc import DBAPIError

# --- secrets --------------------------------------------------------------------------------------

#: shorter values would mask ordinary words; every real token and key is longer
MIN_SECRET_LENGTH = 6
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()


def register_secret(value: object) -> None:
    """Remember a secret read from a connection so ``scrub`` masks it wherever it is echoed."""
    if not isinstance(value, str):
        return
    value = value.strip()
    if len(value) >= MIN_SECRET_LENGTH:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def mask_secrets(text: str) -> str:
    """Replace every registered secret in ``text`` with ``<secret>`` (longest first, so none is half-masked)."""
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "<secret>")
    return text


# --- emails ---------------------------------------------------------------------------------------

# Characters that end an address in running text. Everything else may belong to one, including ``%``
# and ``\`` (percent-encoded and JSON-escaped forms).
_DELIM = r"\s\"'<>()\[\]{},;|`"
_AT = r"(?:@|%(?:25)*40|&#0*64;|&#[xX]0*40;|&commat;|\\u0040|\\x40)"
_DOT = r"(?:[.。]|%(?:25)*2[eE]|&#0*46;|&#[xX]0*2[eE];|&period;|\\u002[eE])"
_AT_RE = re.compile(_AT)
_LABEL = rf"(?:(?!{_AT}|{_DOT})[^{_DELIM}@])+"
_TLD = r"(?:[xX][nN]--[0-9A-Za-z-]+|(?:%(?:25)*[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}){2,}|[^\W\d_]{2,})"
#: the domain after an ``@`` form: labels separated by dot forms, ending in a top-level domain
_DOMAIN = re.compile(rf"(?:{_LABEL}{_DOT}){{1,16}}{_TLD}")
_LOCAL_CHAR = re.compile(rf"[^{_DELIM}@]")
_MAX_LOCAL = 256  # more than any real local part, even percent-encoded; bounds the work per ``@``


def _mask_emails(text: str) -> str:
    """Find each ``@`` form, then the local part before it and a domain after it.

    Anchoring on the ``@`` keeps the work linear in the text (a pattern that starts anywhere retries
    the whole local part from every character of a long token).
    """
    spans: list[tuple[int, int]] = []
    seen = 0  # the end of the previous ``@`` form or address: a backward scan stops there
    chain: int | None = None  # where the local part of a previous ``@`` form without a domain began
    for at in _AT_RE.finditer(text):
        start = at.start()
        if start < seen:
            continue  # inside an address already found
        floor = max(seen, start - _MAX_LOCAL)
        while start > floor and _LOCAL_CHAR.match(text, start - 1):
            start -= 1
        if start == seen and chain is not None:
            start = chain  # ``ivan@@example.com``, ``a@b@c.com``: one address, masked whole
        seen = at.end()
        domain = _DOMAIN.match(text, seen)
        if start < at.start() and domain:
            spans.append((start, domain.end()))
            seen, chain = domain.end(), None
        else:
            chain = start
    if not spans:
        return text
    out, last = [], 0
    for start, end in spans:
        out += [text[last:start], "<email>"]
        last = end
    out.append(text[last:])
    return "".join(out)


# --- phone numbers --------------------------------------------------------------------------------

#: separators written between the digit groups of a phone number (space, dot, hyphens and dashes,
#: minus sign, slash, parentheses, and their percent-encoded forms)
_SEP = r"(?:[\s().\-/\u2010-\u2015\u2212]|%2[0-9A-Fa-f])"
_PHONE_SHAPE = (
    r"(?<![\w+%.\-])(?<!\d:)"  # not the tail of a longer token, a decimal or a clock time
    rf"(?:\+|%2[Bb])?\(?\d(?:{_SEP}{{0,4}}\d){{6,16}}"  # 7 to 17 digits: E.164's 15 after a 00 prefix
    r"(?![\w])"
)
# Shapes that resemble phone numbers but are what a reader needs: matched first and kept as they are.
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_YEAR = r"(?:1[89]|2\d)\d{2}"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"  # no leading zero: ``06.12.34.56`` is a phone number
_KEEP_SHAPES = (
    r"(?<![\w.\-])(?<!\d[\s).\-/])(?<!\)\s)(?:"  # not a phone number's last groups (``(06) 12.34.56.78``)
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"  # UUID
    rf"|{_YEAR}(?P<s1>[-/.]){_DAY}(?P=s1){_DAY}(?:[T ]\d{{2}}:\d{{2}}(?::\d{{2}}(?:[.,]\d+)?)?)?"  # date, date and time
    rf"|{_DAY}(?P<s2>[-/.]){_DAY}(?P=s2){_YEAR}"  # 01/11/2026, 01.11.2026
    rf"|(?:{_OCTET}\.){{3}}{_OCTET}"  # IPv4
    r")(?![\w]|[-/.]\d)"
)
_KEEP = re.compile(_KEEP_SHAPES)
_PHONE = re.compile(_PHONE_SHAPE)
_DIGIT = re.compile(r"\d")
#: plain digits (no separator, no plus) outside this range are counts, ids or batch numbers, not phones
BARE_PHONE_DIGITS = range(10, 16)


def _number(m: re.Match[str]) -> str:
    found = m.group(0)
    digits = len(_DIGIT.findall(found))
    separators = re.sub(r"\d", "", found)
    if not separators and digits not in BARE_PHONE_DIGITS:
        return found
    if separators == ".":
        return found  # a decimal number
    return "<number>"


# --- scrub ----------------------------------------------------------------------------------------

#: zero-width and other invisible format characters, which would split an address or number in two
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff]")


def _mask_numbers(text: str) -> str:
    """Phone-like numbers masked in the text between the shapes kept as they are (dates, UUIDs, IPs).

    The kept shapes are cut out first so a number next to one (``3200 10.0.0.12``) is judged alone.
    """
    out, last = [], 0
    for keep in _KEEP.finditer(text):
        out += [_PHONE.sub(_number, text[last : keep.start()]), keep.group(0)]
        last = keep.end()
    out.append(_PHONE.sub(_number, text[last:]))
    return "".join(out)


#: a JSON ``\uXXXX`` escape (escaped again when JSON was quoted in JSON), outside the surrogate range:
#: a lone surrogate could not be written out
_JSON_ESCAPE = re.compile(r"\\+u(?![dD][89a-fA-F])([0-9a-fA-F]{4})")


def _unescaped(text: str) -> str:
    """Vendor bodies are often JSON with non-ASCII escaped: read ``\u0438`` as ``и``, ``\u00a0`` as a space."""
    return _JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def scrub(text: str, limit: int = 500, members: Collection[str] = ()) -> str:
    """Mask registered secrets, ``members`` (keys a caller knows the text may quote), email-like and
    phone-like substrings, and cut to ``limit`` characters."""
    text = _head(mask_members(mask_secrets(text), members), 4 * limit + 1024)
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", _unescaped(text)))
    text = mask_members(mask_secrets(text), members)  # written escaped or in full-width forms
    return _mask_numbers(_mask_emails(text))[:limit]


_PARTIAL_TOKEN = re.compile(rf"[^{_DELIM}]*$")
_PARTIAL_NUMBER = re.compile(r"[\d\W_]*$")


def _head(text: str, size: int) -> str:
    """The first ``size`` characters of a long text (a vendor echoing a 10 MB batch), without the token or
    number the cut splits: half an address or the first groups of a phone number would escape the masks."""
    if len(text) <= size:
        return text
    return _PARTIAL_NUMBER.sub("", _PARTIAL_TOKEN.sub("", text[:size]))


#: shorter member keys are left alone: masking "7" everywhere would destroy the message
MIN_MASKED_MEMBER_LENGTH = 3


def mask_members(text: str, members: Collection[str]) -> str:
    """Replace each of ``members`` found in ``text`` with ``<member>``, longest first.

    A vendor's error can quote the batch it refused; a destination knows its batch's keys, so it passes
    them and they are masked whatever they look like. Only the keys present are replaced, so a batch of
    10,000 keys costs one substring test each.
    """
    found = sorted({m for m in members if len(m) >= MIN_MASKED_MEMBER_LENGTH and m in text}, key=len, reverse=True)
    for member in found:
        text = text.replace(member, "<member>")
    return text


# --- database drivers -----------------------------------------------------------------------------

# Postgres quotes a value after a colon ('invalid input syntax for type integer: "c_17"') or after
# "value" ('value "99999999999" is out of range'); identifiers it quotes elsewhere (relation, column,
# constraint) stay readable. MySQL and SQLite quote values in single quotes.
_PG_VALUE = re.compile(r'(:\s*|\bvalue\s+)"[^"]*"')
_SINGLE_QUOTED = re.compile(r"'[^']*'")


def _driver_error_types() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a pinned dependency
        return tuple(kinds)
    return (*kinds, psycopg.Error)


#: PEP 249 errors raised by the drivers themselves, when code talks to a raw cursor (``COPY``)
DRIVER_ERRORS = _driver_error_types()


def is_driver_error(exc: BaseException) -> bool:
    """A database driver's error, raw or wrapped by SQLAlchemy: its text can quote rows."""
    return isinstance(exc, (DBAPIError, *DRIVER_ERRORS))


def driver_line(exc: BaseException, limit: int = 300) -> str:
    """What the driver said, safe to log: its first line, quoted values masked, then ``scrub``-bed.

    ``str()`` of a SQLAlchemy error adds the statement and the driver's ``DETAIL`` (``Key
    (member_key)=(alice@example.com) already exists``, ``Failing row contains (...)``); none of that is kept.
    """
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    first = lines[0].strip() if lines else ""
    first = _SINGLE_QUOTED.sub("'<value>'", _PG_VALUE.sub(r'\1"<value>"', first))
    return scrub(first, limit) or "no message"
