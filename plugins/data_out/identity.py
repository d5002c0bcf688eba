"""Identifier normalisation and hashing, by each vendor's published rules.

Every destination matches people on identifiers that were normalised the same way before hashing; a
single stray space or capital letter turns a match into a silent miss. This module is the one place that
decides what "normalised" means, and it reports *why* a value could not be used (missing or invalid,
with a reason code from ``REASONS``) and what it repaired, instead of dropping it, so the run record
can show identifier quality as numbers. The rules, key by key, with the vendor pages they follow, are
in ``docs/identity.md``; the choices where vendors disagree or are silent in ``docs/decisions/identity.md``.

Nothing here logs, and no exception raised here carries a raw value.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import phonenumbers
import pycountry

from data_out.hashing import sha256_hex

#: Bumped whenever a rule below changes. It is part of every row's fingerprint (``engine/stage.py``), so the
#: next run normalises every member again; the diff then moves only the members whose hashes changed
#: (remove the old hash, add the new one), under the mass-removal guard. See docs/identity.md.
NORMALIZATION_VERSION = "4"

MISSING = "missing"
INVALID = "invalid"

MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
MAX_PHONE_LENGTH = 64  # far above any real number with formatting; longer input is garbage
MAX_EXTERNAL_ID_LENGTH = 256
MAX_FIELD_LENGTH = 256  # names, cities, states, postcodes: longer input is garbage

#: Reason codes: why an identifier is invalid, or what was repaired on one that is used. Counted per run
#: (``engine/figures.py``), shown in the run table; never with the value itself.
REASONS: dict[str, str] = {
    "email_undecodable": "email is not UTF-8 text",
    "email_too_long": "email longer than 254 characters",
    "email_invisible": "email has invisible or control characters inside",
    "email_shape": "email not of the form name@domain.tld",
    "email_edge_chars": "email had Unicode spaces or format characters at its ends (removed)",
    "email_mailto": "email wrapped in mailto: (unwrapped)",
    "email_angle": "email wrapped in <...> (unwrapped)",
    "email_folded": "email had full-width or compatibility characters (folded)",
    "phone_undecodable": "phone is not UTF-8 text",
    "phone_too_long": "phone longer than 64 characters",
    "phone_unparsable": "phone could not be read as a number",
    "phone_not_valid": "phone number not valid for its country",
    "phone_mx_legacy": "Mexican mobile in the pre-2019 +52 1 form (rewritten)",
    "external_id_undecodable": "external id is not UTF-8 text",
    "external_id_bad": "external id too long or with control characters",
    "fn_no_letters": "first name has no letters",
    "ln_no_letters": "last name has no letters",
    "fi_no_letter": "first initial is not a letter",
    "ct_no_letters": "city has no letters",
    "st_unknown": "state not recognised",
    "zip_unknown": "postcode not recognised",
    "country_unknown": "country not recognised",
    "gen_unknown": "gender not m or f",
}


@dataclass(frozen=True, slots=True)
class Normalized:
    """A normalised identifier, or the reason there is none.

    ``issue`` is ``missing`` or ``invalid`` when there is no value; ``reason`` a ``REASONS`` code: why it
    is invalid, or what was repaired on a value that is used.
    """

    value: str | None
    issue: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


#: a source NULL, the commonest value of all; ``Normalized`` is immutable, so one instance serves every row
_MISSING = Normalized(None, MISSING)


def _as_text(raw: Any) -> str | None:
    """Coerce a source value to text; ``None`` for undecodable bytes (counted as invalid by callers)."""
    if raw is None:
        return ""
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(raw)


def _is_edge(ch: str) -> bool:
    """White space, NUL or a format character (zero-width, BOM, bidi marks): never part of a value.

    Other control characters are not stripped: a value made of them is garbage, counted as invalid.
    """
    return ch.isspace() or ch == "\0" or unicodedata.category(ch) in {"Cf", "Zs", "Zl", "Zp"}


def strip_edges(text: str, also: str = "") -> str:
    """``text`` without every Unicode white space, NUL and format character (and ``also``) at its ends."""
    start, end = 0, len(text)
    while start < end and (_is_edge(text[start]) or text[start] in also):
        start += 1
    while end > start and (_is_edge(text[end - 1]) or text[end - 1] in also):
        end -= 1
    return text[start:end]


def _has_invisible(text: str) -> bool:
    """A format, control or non-ASCII space character inside (a plain space is a shape problem)."""
    return any(c != " " and (_is_edge(c) or unicodedata.category(c) == "Cc") for c in text)


# -- email --------------------------------------------------------------------------------------------

#: Meta's SDK also strips stray dots at both ends (``format_params``); no vendor keeps them.
_EMAIL_EDGE = "."
#: One "@"; the local part without white space or the characters that only appear in wrappers and
#: lists; a dotted domain of letters, digits and hyphens whose last label has two or more characters.
#: Vendors reject what they cannot match; our job is to not send obvious garbage and to count it.
_EMAIL_RE = re.compile(r"^[^@\s<>()\[\]\\,;:\"]+@(?:[\w-]+\.)+[\w-]{2,}$")
_GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})
#: the snapshot column holding the hash of Google's Data Manager form of the email (``google_email``); a
#: destination maps its email to it to match on that form
GMAIL_COLUMN = "email_google_sha256"


def _unwrap_email(text: str) -> tuple[str, str | None]:
    """``mailto:a@b.c`` and ``<a@b.c>`` are the same address in a link's or a header's clothes."""
    reason = None
    if text[:1] == "<" and text[-1:] == ">":
        text, reason = strip_edges(text[1:-1]), "email_angle"
    if text[:7].lower() == "mailto:":
        text, reason = strip_edges(text[7:]), "email_mailto"
        if text[:1] == "<" and text[-1:] == ">":
            text = strip_edges(text[1:-1])
    return text, reason


def normalize_email(raw: Any, gmail_canonical: bool = False) -> Normalized:
    """Meta, Google and TikTok: trim, lower-case. Full-width forms are folded (NFKC), wrappers unwrapped.

    ``gmail_canonical``: Google's Data Manager API rule, for gmail.com and googlemail.com addresses only:
    dots and a ``+tag`` before the ``@`` are removed (``cloudy.sf+shop@gmail.com`` -> ``cloudysf@gmail.com``).
    The Google Ads API guidance and Meta do not ask for it; see docs/decisions/identity.md.
    """
    norm = _simple_email(raw) or _normalize_email(raw)
    if gmail_canonical and norm.value:
        return Normalized(google_email(norm.value), None, norm.reason)
    return norm


#: A plain ASCII address, at most with plain spaces around it: nothing for the general rules below to
#: strip, fold or unwrap, so lower-casing and the shape check are all that is left of them.
_SIMPLE_EMAIL = re.compile(r" *([A-Za-z0-9_%+\-][A-Za-z0-9._%+\-]*@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+) *")


def _simple_email(raw: Any) -> Normalized | None:
    """``_normalize_email``'s result for the common shapes, about ten times cheaper; ``None`` for the rest."""
    if raw is None:
        return _MISSING
    if type(raw) is not str or not (m := _SIMPLE_EMAIL.fullmatch(raw)):
        return None
    value = m.group(1).lower()
    if len(value) > MAX_EMAIL_LENGTH:
        return Normalized(None, INVALID, "email_too_long")
    return Normalized(value) if _EMAIL_RE.match(value) else Normalized(None, INVALID, "email_shape")


def _normalize_email(raw: Any) -> Normalized:
    """The general rules (``normalize_email`` without the Gmail form) for any value."""
    text = _as_text(raw)
    if text is None:
        return Normalized(None, INVALID, "email_undecodable")
    trimmed = strip_edges(text, _EMAIL_EDGE)
    if not trimmed:
        return Normalized(None, MISSING)
    # plain ASCII white space at the ends is routine; anything else stripped there is worth a count
    reason = "email_edge_chars" if trimmed != text.strip(" \t\r\n\0\x0b.") else None
    if _has_invisible(trimmed):  # before folding, which would turn a no-break space into a plain one
        return Normalized(None, INVALID, "email_invisible")
    folded = unicodedata.normalize("NFKC", trimmed)
    if folded != trimmed:
        reason = "email_folded"
    unwrapped, wrapped = _unwrap_email(folded)
    reason = wrapped or reason
    value = strip_edges(unwrapped, _EMAIL_EDGE).lower()
    if len(value) > MAX_EMAIL_LENGTH:
        return Normalized(None, INVALID, "email_too_long")
    if not _EMAIL_RE.match(value):
        return Normalized(None, INVALID, "email_shape")
    return Normalized(value, None, reason)


def google_email(normalized: str) -> str:
    """Google's Data Manager form of a normalised address: for gmail.com and googlemail.com, the local part
    without dots and without a plus sign and what follows (Google's "Format user data" rules); others as
    they are. Google matches the hash of this form, so a dotted Gmail address would otherwise miss."""
    local, _, domain = normalized.rpartition("@")
    if domain not in _GMAIL_DOMAINS:
        return normalized
    local = local.split("+", 1)[0].replace(".", "")
    return f"{local}@{domain}" if local else normalized


# -- phone --------------------------------------------------------------------------------------------


def normalize_phone(raw: Any, default_region: str) -> Normalized:
    """Parse with ``phonenumbers`` and return E.164 (``+14155550123``) when the number is valid.

    Numbers written without a country code are read in ``default_region`` (an ISO 3166 alpha-2 code).
    Mexican mobiles in the form used before 2019 (``+52 1 55 ...``) are rewritten to the current one.
    """
    return _nanp_phone(raw, default_region) or _normalize_phone(raw, default_region)


#: A North American number in one of its everyday shapes: ``+1`` (or nothing, in a +1 region), the area
#: code (in brackets or not) and seven digits, single spaces or dashes between the groups. An area code
#: never starts with 0 or 1, and a number that does is left to ``phonenumbers.parse``, which then reads a
#: leading 1 as the country code. Only ASCII digits: others are folded by the general rules.
_NANP_SHAPE = re.compile(r" *(\+1[ -]?)?(?:\(([2-9][0-9]{2})\)|([2-9][0-9]{2}))[ -]?([0-9]{3})[ -]?([0-9]{4}) *")


def _nanp_phone(raw: Any, default_region: str) -> Normalized | None:
    """``_normalize_phone``'s result for ``_NANP_SHAPE``, without ``phonenumbers.parse`` (half the cost of a
    phone); ``None`` for anything else. Validity and E.164 still come from ``phonenumbers`` itself."""
    if raw is None:
        return _MISSING
    if type(raw) is not str or not (m := _NANP_SHAPE.fullmatch(raw)):
        return None
    plus, bracketed, bare, exchange, line = m.groups()
    if plus is None and phonenumbers.country_code_for_region(default_region.upper()) != 1:
        return None
    number = phonenumbers.PhoneNumber(country_code=1, national_number=int(f"{bracketed or bare}{exchange}{line}"))
    if not _valid_nanp(number):
        return Normalized(None, INVALID, "phone_not_valid")
    return Normalized(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


#: ``is_valid_number`` first finds the number's region (the first of +1's regions whose patterns it
#: matches) and then matches that region's patterns again. With the US first among +1's regions and no
#: leading-digits shortcut of its own, a number that matches the US patterns is the US's and valid.
_US_FIRST = (
    phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1][0] == "US"
    and getattr(phonenumbers.PhoneMetadata.metadata_for_region("US"), "leading_digits", "") is None
)


def _valid_nanp(number: phonenumbers.PhoneNumber) -> bool:
    """``phonenumbers.is_valid_number`` for a +1 number, matching a US number's patterns once, not twice."""
    if _US_FIRST and _valid_in_region("US", phonenumbers.national_significant_number(number)):
        return True
    return phonenumbers.is_valid_number(number)


def _valid_in_region(region: str, national: str) -> bool:
    """``phonenumbers.is_valid_number_for_region`` for the national significant number of one of the
    region's own numbers, from the same metadata, in two regular expressions instead of a dozen."""
    general, typed = _region_patterns(region)
    return general(national) is not None and typed(national) is not None


_Matcher = Callable[[str], "re.Match[str] | None"]


@cache
def _region_patterns(region: str) -> tuple[_Matcher, _Matcher]:
    """The region's patterns as ``phonenumbers`` applies them (``_number_type_helper``): a number is valid
    when it matches the general description and the description of at least one type. A description
    matches when its possible lengths (if it lists any) include the number's and its pattern matches
    the whole number, so each type's pattern is joined in with a lookahead on the lengths it allows."""
    md = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if md is None:
        raise ValueError(f"no phone metadata for region {region!r}")
    types = (
        md.premium_rate,
        md.toll_free,
        md.shared_cost,
        md.voip,
        md.personal_number,
        md.pager,
        md.uan,
        md.voicemail,
        md.fixed_line,
        md.mobile,  # when it has the fixed line's pattern, it matches what that one does: no change
    )

    def described(desc: Any) -> str | None:
        if desc is None or not desc.national_number_pattern:
            return None
        if not desc.possible_length:  # no lengths listed: the pattern alone decides
            return f"(?:{desc.national_number_pattern})"
        lengths = [n for n in desc.possible_length if n > 0]  # [-1]: no number has this type
        if not lengths:
            return None
        return "(?=" + "|".join(f"[0-9]{{{n}}}\\Z" for n in lengths) + f")(?:{desc.national_number_pattern})"

    general = described(md.general_desc)
    alternatives = [d for d in (described(t) for t in types) if d is not None]
    if general is None or not alternatives:
        never = re.compile("(?!)").fullmatch  # nothing is valid
        return never, never
    return re.compile(general).fullmatch, re.compile("|".join(f"(?:{a})" for a in alternatives)).fullmatch


def _normalize_phone(raw: Any, default_region: str) -> Normalized:
    """The general rules (``normalize_phone``) for any value."""
    text = _as_text(raw)
    if text is None:
        return Normalized(None, INVALID, "phone_undecodable")
    text = unicodedata.normalize("NFKC", strip_edges(text))
    if not text:
        return Normalized(None, MISSING)
    if len(text) > MAX_PHONE_LENGTH:
        return Normalized(None, INVALID, "phone_too_long")
    if text.startswith("00"):  # international dialling prefix written instead of "+"
        text = "+" + text[2:]
    try:
        parsed = phonenumbers.parse(text, default_region.upper())
    except phonenumbers.NumberParseException:
        return Normalized(None, INVALID, "phone_unparsable")
    reason = None
    if not phonenumbers.is_valid_number(parsed):
        legacy = _mexican_mobile(parsed)
        if legacy is None:
            return Normalized(None, INVALID, "phone_not_valid")
        parsed, reason = legacy, "phone_mx_legacy"
    return Normalized(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), None, reason)


def _mexican_mobile(parsed: phonenumbers.PhoneNumber) -> phonenumbers.PhoneNumber | None:
    """``+52 1 XX XXXX XXXX`` without its ``1``, when that is valid (Mexico dropped the mobile ``1`` in 2019)."""
    national = str(parsed.national_number)
    if parsed.country_code != 52 or len(national) != 11 or not national.startswith("1"):
        return None
    current = phonenumbers.PhoneNumber(country_code=52, national_number=int(national[1:]))
    return current if phonenumbers.is_valid_number(current) else None


# -- external id --------------------------------------------------------------------------------------


def normalize_external_id(raw: Any) -> Normalized:
    """External ids are sent as they are, only trimmed: they are the customer's own key."""
    if raw is None:
        return _MISSING
    text = _as_text(raw)
    if text is None:
        return Normalized(None, INVALID, "external_id_undecodable")
    text = strip_edges(text)
    if not text:
        return Normalized(None, MISSING)
    if len(text) > MAX_EXTERNAL_ID_LENGTH or any(unicodedata.category(c) == "Cc" for c in text):
        return Normalized(None, INVALID, "external_id_bad")
    return Normalized(text)


# -- Meta's other match keys --------------------------------------------------------------------------

#: Meta's optional match keys (customer list "multi-key" schema), all sent SHA-256 hashed.
META_EXTRA_KEYS = ("FN", "LN", "FI", "CT", "ST", "ZIP", "COUNTRY", "GEN")


def _letters(text: str) -> str:
    """Lower-case letters (and their combining marks) only, in UTF-8: Meta keeps ``valéry`` and ``정``.

    NFKC first, so full-width and compatibility forms fold to plain letters and an ``é`` written as
    ``e`` + combining accent hashes like the precomposed one.
    """
    folded = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in folded if unicodedata.category(c)[0] in "LM")


@cache
def _us_states() -> dict[str, str]:
    """US states, DC and territories from ISO 3166-2 (pycountry): code and name, letters only -> code."""
    out = {}
    for sub in pycountry.subdivisions.get(country_code="US"):
        code = sub.code.split("-", 1)[1].lower()
        out[code] = code
        out[_letters(sub.name)] = code
    return out


def normalize_country(raw: Any) -> Normalized:
    """ISO 3166-1 alpha-2, lower case, from an alpha-2, alpha-3 or numeric code or a name pycountry knows.

    ``UK`` (ISO's exceptionally reserved code for the United Kingdom) is read as ``gb``. Anything else is
    invalid: never guessed, never cut to its first two letters.
    """
    text = _as_text(raw)
    if text is None:
        return Normalized(None, INVALID, "country_unknown")
    text = unicodedata.normalize("NFKC", strip_edges(text))
    if not text:
        return Normalized(None, MISSING)
    code = _country_code(text)
    return Normalized(code) if code else Normalized(None, INVALID, "country_unknown")


@lru_cache(maxsize=4096)  # few distinct countries; bounded however much garbage a source holds
def _country_code(text: str) -> str | None:
    candidates = [text, re.sub(r"[.\s]+", "", text) if len(text) <= 7 else text]  # "U.S.A." -> "USA"
    for candidate in candidates:
        if candidate.isdigit():
            candidate = candidate.zfill(3)
        if candidate.upper() == "UK":
            return "gb"
        try:
            return str(pycountry.countries.lookup(candidate).alpha_2).lower()
        except LookupError:
            continue
    return None


def normalize_state(raw: Any, country: str | None) -> Normalized:
    """Meta: the 2-letter code for US states, other states' names lower case without punctuation or spaces.

    ``country`` is the member's normalised country when the audience maps one: a US member's state must
    be a US state, district or territory. Without a country, a value that names a US state becomes its
    code and anything else is taken as a state elsewhere.
    """
    text = _as_text(raw)
    if text is None:
        return Normalized(None, INVALID, "st_unknown")
    letters = _letters(strip_edges(text))
    if not strip_edges(text):
        return Normalized(None, MISSING)
    code = _us_states().get(letters)
    if code:
        return Normalized(code)
    if country == "us" or not letters or len(text) > MAX_FIELD_LENGTH:
        return Normalized(None, INVALID, "st_unknown")
    return Normalized(letters)


_US_ZIP = re.compile(r"^(\d{5})(?:-?\d{4})?$")


def normalize_zip(raw: Any, country: str | None) -> Normalized:
    """Meta: lower case, no white space, no dash; US ZIP codes cut to their first 5 digits (ZIP+4 -> ZIP).

    A US member's ZIP must be 5 digits (or ZIP+4). Without a country, ``NNNNN-NNNN`` and nine digits are
    read as ZIP+4; no other country writes its postcodes so.
    """
    text = _as_text(raw)
    if text is None:
        return Normalized(None, INVALID, "zip_unknown")
    text = unicodedata.normalize("NFKC", strip_edges(text)).lower()
    if not text:
        return Normalized(None, MISSING)
    compact = re.sub(r"[\s\-]+", "", text)
    us = _US_ZIP.match(re.sub(r"\s+", "", text))
    if us and country in (None, "us"):
        return Normalized(us.group(1))
    if country == "us" or not re.fullmatch(r"[0-9a-z]{2,10}", compact):
        return Normalized(None, INVALID, "zip_unknown")
    return Normalized(compact)


_FIELD_REASONS = {"FN": "fn_no_letters", "LN": "ln_no_letters", "FI": "fi_no_letter", "CT": "ct_no_letters"}
_FIELD_REASONS["GEN"] = "gen_unknown"
_GENDERS = {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f"}


def normalize_meta_field(key: str, raw: Any, country: str | None = None) -> Normalized:
    """One of Meta's other match keys by Meta's rules (docs/identity.md); ``country`` shapes ST and ZIP."""
    if key == "COUNTRY":
        return normalize_country(raw)
    if key == "ST":
        return normalize_state(raw, country)
    if key == "ZIP":
        return normalize_zip(raw, country)
    text = _as_text(raw)
    reason = _FIELD_REASONS[key]
    if text is None:
        return Normalized(None, INVALID, reason)
    text = strip_edges(text)
    if not text:
        return Normalized(None, MISSING)
    if len(text) > MAX_FIELD_LENGTH:
        return Normalized(None, INVALID, reason)
    letters = _letters(text)
    if key == "GEN":
        value = _GENDERS.get(letters)
    elif key == "FI":
        value = letters[:1]
    else:  # FN, LN, CT
        value = letters
    return Normalized(value, None) if value else Normalized(None, INVALID, reason)


def is_valid_region(region: str) -> bool:
    return region.upper() in phonenumbers.SUPPORTED_REGIONS


def notes_text(reasons: list[str]) -> str | None:
    """The reason codes of one member as stored (``do_member.id_notes``): `` a b `` (spaces around each)."""
    return f" {' '.join(sorted(set(reasons)))} " if reasons else None


@dataclass(frozen=True, slots=True)
class IdentityForms:
    """The hashed forms of one member's identifiers that destinations may ask for.

    Meta hashes the phone as digits without the plus sign, Google Ads as E.164 with it, so one phone
    hash cannot serve both: both forms are kept and each destination picks its own. The same holds for
    Google's Data Manager form of the email (``google_email``).
    """

    email_sha256: str | None
    phone_e164_sha256: str | None
    phone_digits_sha256: str | None
    external_id: str | None
    email_issue: str | None
    phone_issue: str | None
    external_id_issue: str | None
    email_google_sha256: str | None = None
    email_reason: str | None = None
    phone_reason: str | None = None
    external_id_reason: str | None = None


def identity_forms(email: Any, phone: Any, external_id: Any, default_region: str, gmail: bool = False) -> IdentityForms:
    """Normalise and hash one member's identifiers in every form a destination may need."""
    e = normalize_email(email)
    p = normalize_phone(phone, default_region)
    x = normalize_external_id(external_id)
    return IdentityForms(
        email_sha256=sha256_hex(e.value) if e.value else None,
        phone_e164_sha256=sha256_hex(p.value) if p.value else None,
        phone_digits_sha256=sha256_hex(p.value[1:]) if p.value else None,
        external_id=x.value,
        email_issue=e.issue,
        phone_issue=p.issue,
        external_id_issue=x.issue,
        email_google_sha256=sha256_hex(google_email(e.value)) if e.value else None,
        email_reason=e.reason,
        phone_reason=p.reason,
        external_id_reason=x.reason,
    )
