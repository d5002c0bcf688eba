"""Identifier normalisation and hashing.

Every destination matches people on identifiers that were normalised the same way before hashing; a
single stray space or capital letter turns a match into a silent miss. This module is the one place that
decides what "normalised" means, and it reports *why* a value could not be used (missing or invalid)
instead of dropping it, so the run record can show missing identifiers as a number.

Nothing here logs, and no exception raised here carries a raw value.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import phonenumbers

#: Bumped whenever a rule below changes, so that cached normalisations in the state database are
#: recomputed instead of trusted (it is part of the row fingerprint, see ``staging.py``).
NORMALIZATION_VERSION = "3"

MISSING = "missing"
INVALID = "invalid"

MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
MAX_PHONE_LENGTH = 64  # far above any real number with formatting; longer input is garbage
MAX_EXTERNAL_ID_LENGTH = 256

# Deliberately permissive: one "@", no whitespace, a dot in the domain. Vendors reject what they
# cannot match; our job is to not send obvious garbage and to count it.
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$")


@dataclass(frozen=True, slots=True)
class Normalized:
    """A normalised identifier, or the reason there is none (``issue`` is ``missing`` or ``invalid``)."""

    value: str | None
    issue: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None


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


#: What Meta's SDK strips from both ends of every key before lower-casing (``format_params``); Google
#: Ads documents whitespace trimming only, and the two agree on every valid address.
_EMAIL_STRIP = " \t\r\n\0\x0b."


def normalize_email(raw: Any) -> Normalized:
    """Strip whitespace and stray dots from both ends, lower-case, then validate the shape."""
    text = _as_text(raw)
    if text is None:
        return Normalized(None, INVALID)
    text = text.strip(_EMAIL_STRIP).lower()
    if not text:
        return Normalized(None, MISSING)
    if len(text) > MAX_EMAIL_LENGTH or not _EMAIL_RE.match(text):
        return Normalized(None, INVALID)
    return Normalized(text)


_GOOGLE_MAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


def google_email(normalized: str) -> str:
    """Google's Data Manager form of a normalised address: for gmail.com and googlemail.com, the local part
    without dots and without a plus sign and what follows (Google's "Format user data" rules); others as
    they are. Google matches the hash of this form, so a dotted Gmail address would otherwise miss."""
    local, _, domain = normalized.rpartition("@")
    if domain not in _GOOGLE_MAIL_DOMAINS:
        return normalized
    return f"{local.split('+', 1)[0].replace('.', '')}@{domain}"


def normalize_phone(raw: Any, default_region: str) -> Normalized:
    """Parse with ``phonenumbers`` and return E.164 (``+14155550123``) when the number is valid.

    Numbers written without a country code are read in ``default_region`` (an ISO 3166 alpha-2 code).
    """
    text = _as_text(raw)
    if text is None:
        return Normalized(None, INVALID)
    text = text.strip()
    if not text:
        return Normalized(None, MISSING)
    if len(text) > MAX_PHONE_LENGTH:
        return Normalized(None, INVALID)
    if text.startswith("00"):  # international dialling prefix written instead of "+"
        text = "+" + text[2:]
    try:
        parsed = phonenumbers.parse(text, default_region.upper())
    except phonenumbers.NumberParseException:
        return Normalized(None, INVALID)
    if not phonenumbers.is_valid_number(parsed):
        return Normalized(None, INVALID)
    return Normalized(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def normalize_external_id(raw: Any) -> Normalized:
    """External ids are sent as they are, only trimmed: they are the customer's own key."""
    text = _as_text(raw)
    if text is None:
        return Normalized(None, INVALID)
    text = text.strip()
    if not text:
        return Normalized(None, MISSING)
    if len(text) > MAX_EXTERNAL_ID_LENGTH or any(unicodedata.category(c) == "Cc" for c in text):
        return Normalized(None, INVALID)
    return Normalized(text)


#: Meta's optional match keys and how its SDK (``CustomAudience.normalize_key``) normalises them, after
#: the same strip-and-lower every key gets. All of them are sent SHA-256 hashed.
META_EXTRA_KEYS = ("FN", "LN", "FI", "CT", "ST", "ZIP", "COUNTRY", "GEN")


def normalize_meta_field(key: str, raw: Any) -> str | None:
    """Normalise a name/location value the way Meta's SDK does; ``None`` when nothing usable is left."""
    text = _as_text(raw)
    if not text:
        return None
    text = text.strip(_EMAIL_STRIP).lower()
    if key in {"FN", "LN", "FI", "CT", "ST"}:
        text = re.sub(r"[^a-z]", "", text)
    elif key == "ZIP":
        text = text.split("-")[0].strip()
    elif key == "COUNTRY":
        text = re.sub(r"[^a-z]", "", text)[:2]
    elif key == "GEN":
        text = text.strip()[:1]
    return text or None


def sha256_hex(value: str) -> str:
    """SHA-256 of the UTF-8 bytes, lower-case hex: the format Meta, Google Ads and TikTok all accept."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def is_valid_region(region: str) -> bool:
    return region.upper() in phonenumbers.SUPPORTED_REGIONS


@dataclass(frozen=True, slots=True)
class IdentityForms:
    """The hashed forms of one member's identifiers that destinations may ask for.

    Meta hashes the phone as digits without the plus sign, Google Ads as E.164 with it, so one phone
    hash cannot serve both: both forms are kept and each destination picks its own.
    """

    email_sha256: str | None
    email_google_sha256: str | None  # Google's Data Manager form (``google_email``)
    phone_e164_sha256: str | None
    phone_digits_sha256: str | None
    external_id: str | None
    email_issue: str | None
    phone_issue: str | None
    external_id_issue: str | None


def identity_forms(email: Any, phone: Any, external_id: Any, default_region: str) -> IdentityForms:
    """Normalise and hash one member's identifiers in every form a destination may need."""
    e = normalize_email(email)
    p = normalize_phone(phone, default_region)
    x = normalize_external_id(external_id)
    return IdentityForms(
        email_sha256=sha256_hex(e.value) if e.value else None,
        email_google_sha256=sha256_hex(google_email(e.value)) if e.value else None,
        phone_e164_sha256=sha256_hex(p.value) if p.value else None,
        phone_digits_sha256=sha256_hex(p.value[1:]) if p.value else None,
        external_id=x.value,
        email_issue=e.issue,
        phone_issue=p.issue,
        external_id_issue=x.issue,
    )
