"""Normalisation and hashing: what goes out must match what the vendors compute on their side."""

from __future__ import annotations

import hashlib

import pytest

from data_out.identity import (
    INVALID,
    MISSING,
    identity_forms,
    normalize_email,
    normalize_external_id,
    normalize_phone,
    sha256_hex,
)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("test@example.com", "test@example.com"),
        ("  Test@Example.COM ", "test@example.com"),
        ("\tuser.name+tag@Gmail.com\n", "user.name+tag@gmail.com"),
        ("user@example.com.", "user@example.com"),  # trailing dot of the domain
        ("ÉLODIE@exemple.fr", "élodie@exemple.fr"),
        (".user@example.com..", "user@example.com"),  # what Meta's SDK strips, it strips at both ends
    ],
)
def test_email_normalisation(raw, want):
    assert normalize_email(raw).value == want


@pytest.mark.parametrize(
    ("raw", "issue"),
    [
        (None, MISSING),
        ("", MISSING),
        ("   ", MISSING),
        ("n/a", INVALID),
        ("a@b", INVALID),
        ("a b@c.com", INVALID),
        ("x@" + "y" * 300 + ".com", INVALID),
        (b"\xff\xfe@x.com", INVALID),
        ("a@@b.com", INVALID),
    ],
)
def test_email_problems_are_named_not_raised(raw, issue):
    n = normalize_email(raw)
    assert (n.value, n.issue) == (None, issue)


def test_known_sha256_of_a_normalised_email():
    # SHA-256 of "test@example.com", as every vendor documents for its hashing examples
    assert sha256_hex(normalize_email(" Test@Example.com ").value) == (
        "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
    )


@pytest.mark.parametrize(
    ("raw", "region", "want"),
    [
        ("(415) 555-2671", "US", "+14155552671"),
        ("415.555.2671", "US", "+14155552671"),
        ("+1 415 555 2671", "GB", "+14155552671"),  # an explicit country code wins over the default
        ("14155552671", "US", "+14155552671"),
        ("0044 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("07911 123456", "GB", "+447911123456"),
        ("+49 151 23456789", "US", "+4915123456789"),
    ],
)
def test_phone_to_e164(raw, region, want):
    assert normalize_phone(raw, region).value == want


@pytest.mark.parametrize("raw", ["12", "555-CALL-NOW", "+1 000 000 0000", "9" * 70, b"\xff\x00"])
def test_invalid_phones_are_counted_as_invalid(raw):
    assert normalize_phone(raw, "US").issue == INVALID


def test_phone_hash_forms_differ_by_the_plus_sign():
    f = identity_forms(None, "(415) 555-2671", None, "US")
    assert f.phone_e164_sha256 == hashlib.sha256(b"+14155552671").hexdigest()  # Google Ads
    assert f.phone_digits_sha256 == hashlib.sha256(b"14155552671").hexdigest()  # Meta
    assert f.email_issue == MISSING and f.email_sha256 is None


def test_external_id_is_kept_as_is_but_trimmed():
    assert normalize_external_id("  CUST-42 ").value == "CUST-42"
    assert normalize_external_id(42).value == "42"
    assert normalize_external_id("x" * 300).issue == INVALID
    assert normalize_external_id("bad\x00id").issue == INVALID
