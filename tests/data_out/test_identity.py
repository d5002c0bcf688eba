"""Normalisation and hashing: what goes out must match what the vendors compute on their side."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re

import phonenumbers
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from data_out import history, identity, report, state
from data_out.config import AudienceConfig, Identifiers, load_audiences
from data_out.destinations.google_ads.destination import GoogleAdsDestination
from data_out.destinations.tiktok.destination import TikTokDestination
from data_out.engine import changes, stage
from data_out.engine.runner import AudienceRunner, RunFailed
from data_out.identity import (
    GMAIL_COLUMN,
    INVALID,
    MISSING,
    google_email,
    identity_forms,
    normalize_email,
    normalize_external_id,
    normalize_phone,
    sha256_hex,
)
from data_out.normalise import Normaliser
from tests.conftest import write_audience

AS_OF = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)


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


# -- changing a rule is a migration ---------------------------------------------------------------------

MIGRATION_AUD = "norm_upgrade_v1"
MIGRATION_YAML = f"""
    name: {MIGRATION_AUD}
    owner: tests
    purpose: normalisation upgrade
    source: {{conn_id: db, query: "SELECT customer_id, email, phone FROM people WHERE in_audience = 1"}}
    destinations: [{{type: memory, batch_size: 4}}]
"""


def _old_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The previous email rules: ASCII trimming only, no unwrapping, invisible characters kept."""

    def version_2(raw, gmail_canonical=False):  # type: ignore[no-untyped-def]
        text = raw.strip(" \t\r\n\0\x0b.").lower() if isinstance(raw, str) else ""
        if not text:
            return identity.Normalized(None, MISSING)
        ok = len(text) <= 254 and re.match(r"^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$", text)
        return identity.Normalized(text) if ok else identity.Normalized(None, INVALID)

    monkeypatch.setattr(identity, "normalize_email", version_2)
    monkeypatch.setattr(stage, "NORMALIZATION_VERSION", "2")


def _sync(tmp_path, resolver, state_engine, holder: str) -> None:  # type: ignore[no-untyped-def]
    write_audience(tmp_path / "aud", MIGRATION_AUD, MIGRATION_YAML)
    AudienceRunner(state_engine, load_audiences(tmp_path / "aud"), MIGRATION_AUD, resolver).run(holder, AS_OF)


def _pushed(store, op: str) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    return {r.member_key: r.email_sha256 for o, _, rows in store.requests if o == op for r in rows}


def _last_sync(engine) -> dict:  # type: ignore[no-untyped-def]
    s = state.sync
    with engine.connect() as conn:
        return dict(conn.execute(select(s).order_by(s.c.id.desc()).limit(1)).mappings().one())


def test_a_new_normalisation_version_moves_only_the_members_whose_hashes_change(
    tmp_path, resolver, state_engine, people, store, monkeypatch
):
    plain = [{"customer_id": f"c{i}", "email": f"P{i}@Example.com"} for i in range(8)]
    wrapped = [
        {"customer_id": "w1", "email": "mailto:w1@example.com"},  # v2: hashed with "mailto:", v3: unwrapped
        {"customer_id": "w2", "email": "<w2@example.com>"},
    ]
    nbsp = [{"customer_id": "n1", "email": "n1@example.com\u00a0"}]  # v2: invalid (lost), v3: trimmed
    people.set(plain + wrapped + nbsp)
    with monkeypatch.context() as m:
        _old_rules(m)
        _sync(tmp_path, resolver, state_engine, "t/1")
    held = store.audience("aud-1")
    assert held["w1"].email_sha256 == sha256_hex("mailto:w1@example.com") and "n1" not in held
    before = {k: r.email_sha256 for k, r in held.items()}
    store.requests.clear()

    monkeypatch.setattr(changes, "ALWAYS_RECORD", 0)  # as in an audience of more than 10,000 members
    _sync(tmp_path, resolver, state_engine, "t/2")  # the upgraded rules (identity.NORMALIZATION_VERSION)

    assert _pushed(store, "remove") == {"w1": before["w1"], "w2": before["w2"]}  # exactly the old hashes
    assert _pushed(store, "add") == {
        "w1": sha256_hex("w1@example.com"),
        "w2": sha256_hex("w2@example.com"),
        "n1": sha256_hex("n1@example.com"),
    }
    after = {k: r.email_sha256 for k, r in store.audience("aud-1").items()}
    assert {k: after[k] for k in before if k.startswith("c")} == {k: v for k, v in before.items() if k.startswith("c")}
    sync = _last_sync(state_engine)
    assert (sync["status"], sync["changed"], sync["guard"]) == ("success", 2, "passed")
    assert sync["diffed_keys"] is None  # every member normalised again: one full diff, not 11 recorded keys

    store.requests.clear()
    _sync(tmp_path, resolver, state_engine, "t/3")  # settled: nothing moves again
    assert store.requests == []


def test_a_rule_change_that_would_drop_many_members_is_held_by_the_guard(
    tmp_path, resolver, state_engine, people, store, monkeypatch
):
    # the previous rules hashed addresses with a zero-width space inside as they were; the current ones refuse them
    people.set(
        [{"customer_id": f"z{i}", "email": f"z{i}\u200b@example.com"} for i in range(6)]
        + [{"customer_id": f"c{i}", "email": f"c{i}@example.com"} for i in range(4)]
    )
    with monkeypatch.context() as m:
        _old_rules(m)
        _sync(tmp_path, resolver, state_engine, "t/1")
    assert len(store.audience("aud-1")) == 10
    store.requests.clear()

    with pytest.raises(RunFailed, match="mass-removal guard"):
        _sync(tmp_path, resolver, state_engine, "t/2")
    assert store.requests == [] and len(store.audience("aud-1")) == 10
    assert _last_sync(state_engine)["status"] == "guarded"


# -- identifier quality per reason, in the run record and the run table ----------------------------------


def test_each_runs_identifier_quality_is_counted_per_reason_never_with_values(
    tmp_path, resolver, state_engine, people, store
):
    raw = {
        "a": "mailto:a@example.com",
        "b": "mailto:b@example.com",
        "c": "<c@example.com>",
        "d": "\ufeffd@example.com",
        "e": "e\u200b@example.com",
        "f": "not-an-email",
        "g": "ｇ@example.com",
        "h": "h@example.com",
    }
    people.set(
        [{"customer_id": k, "email": v} for k, v in raw.items()]
        + [{"customer_id": "m", "email": None, "phone": "+52 1 55 1234 5678"}]
    )
    _sync(tmp_path, resolver, state_engine, "t/1")
    with state_engine.connect() as conn:
        issues = conn.execute(select(state.run.c.identifier_issues)).scalar_one()
    assert {k: v for k, v in issues.items() if k.startswith("reason:")} == {
        "reason:email_mailto": 2,
        "reason:email_angle": 1,
        "reason:email_edge_chars": 1,
        "reason:email_invisible": 1,
        "reason:email_shape": 1,
        "reason:email_folded": 1,
    }  # the phone is not mapped by this audience: its repair is not counted
    assert issues["email_invalid"] == 2 and issues["email_missing"] == 1

    rows = report.sync_rows(state_engine, [1])
    table = report.run_report(rows)
    assert "email wrapped in mailto: (unwrapped)" in table and "| email_mailto" in table
    assert rows[0]["invalid"] == 2  # reason counts are not added to the invalid ids again
    hist = history.history_table(history.history_rows(state_engine, MIGRATION_AUD))
    assert "email_mailto 2" in hist
    for value in raw.values():
        assert value not in table and value not in hist and value not in str(issues)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("te\u200bst@example.com", "email_invisible"),
        ("te\u00a0st@example.com", "email_invisible"),  # not folded into a plain space first
        ("te\u3000st@example.com", "email_invisible"),
        ("te st@example.com", "email_shape"),
        ("John <john@example.com>", "email_shape"),
        ("x@" + "y" * 300 + ".com", "email_too_long"),
        (b"\xff@x.com", "email_undecodable"),
    ],
)
def test_each_refused_email_names_its_reason(raw, reason):
    assert normalize_email(raw) == identity.Normalized(None, INVALID, reason)


def test_reasons_of_meta_keys_follow_the_normaliser():
    ids = Identifiers(email="email", phone="phone", extra={"COUNTRY": "country", "ST": "st", "FN": "fn"})
    raw = ("x@y.com", "+52 1 55 1234 5678", None, "Narnia", "…", "Ontario")  # extras in key order: COUNTRY FN ST
    row = Normaliser("q_v1", ids, None).identity("k", raw)
    assert row["id_notes"] == " country_unknown fn_no_letters phone_mx_legacy "
    assert json.loads(row["extra"]) == {"ST": sha256_hex("ontario")}  # no country: taken as a state elsewhere


# -- the choices a destination makes ---------------------------------------------------------------------


def _cfg(destination: dict) -> AudienceConfig:
    return AudienceConfig.model_validate(
        {
            "name": "choice_v1",
            "owner": "t",
            "purpose": "t",
            "source": {"query": "SELECT 1"},
            "identifiers": {"email": "email", "phone": "phone"},
            "destinations": [destination],
        }
    )


def test_google_gmail_form_is_a_destination_setting():
    consent = {"ad_user_data": "GRANTED", "ad_personalization": "GRANTED"}
    base = {"type": "google_ads", "customer_id": "1234567890", "user_list_id": "1", "consent": consent}
    plain, gmail = _cfg(base), _cfg({**base, "gmail_canonical": True})
    assert GoogleAdsDestination.columns_for(plain.destinations[0])["email_sha256"] == "email_sha256"
    assert GoogleAdsDestination.columns_for(gmail.destinations[0])["email_sha256"] == GMAIL_COLUMN
    row = Normaliser.for_audience(gmail).identity("k", ("A.B+x@Gmail.com", None, None))
    assert row[GMAIL_COLUMN] == sha256_hex("ab@gmail.com") and row["email_sha256"] == sha256_hex("a.b+x@gmail.com")


def test_tiktok_phone_form_is_a_destination_setting():
    base = {"type": "tiktok", "advertiser_id": "1", "segment_id": "s1"}
    assert TikTokDestination.columns_for(_cfg(base).destinations[0])["phone_sha256"] == "phone_e164_sha256"
    digits = _cfg({**base, "phone_format": "digits"}).destinations[0]
    assert TikTokDestination.columns_for(digits)["phone_sha256"] == "phone_digits_sha256"


def test_the_quality_table_shows_each_audiences_latest_run_once():
    rows = [
        {"id": 1, "audience": "a", "quality": {"email_shape": 3}},
        {"id": 2, "audience": "a", "quality": {"email_shape": 4, "email_mailto": 1}},
        {"id": 2, "audience": "a", "quality": {"email_shape": 4, "email_mailto": 1}},  # a second destination
    ]
    lines = [line for line in report.quality_report(rows).splitlines() if line.startswith("| a ")]
    assert len(lines) == 2 and "|         4 |" in lines[0] and "email_mailto" in lines[1]


# -- fast paths: the common shapes skip the general rules and must give exactly what the general rules give

_OTHER_DIGITS = "٤١٥０１９"  # Arabic-Indic and full-width digits, which NFKC folds and the general rules read


@st.composite
def _near_miss(draw: st.DrawFn, text: str, insertions: list[str]) -> str:
    """``text`` as it is half the time; otherwise with one change: a character in, out or replaced."""
    kind = draw(st.sampled_from(["same", "same", "same", "insert", "delete", "replace"]))
    if kind == "same" or not text:
        return text
    at = draw(st.integers(0, len(text) - (kind != "insert")))
    new = draw(st.sampled_from(insertions))
    if kind == "insert":
        return text[:at] + new + text[at:]
    return text[:at] + ("" if kind == "delete" else new) + text[at + 1 :]


_PHONE_INSERTIONS = ["0", "1", "5", "9", " ", "-", "+", "(", ")", ".", "a", "x", "O", "\x00", "\u00a0", *_OTHER_DIGITS]


@st.composite
def _phones(draw: st.DrawFn) -> str:
    """North American numbers in everyday shapes (any area code, 0 and 1 included), and their near misses."""
    digits = st.text(alphabet="0123456789", min_size=10, max_size=10)
    npa, exchange, line = (lambda d: (d[:3], d[3:6], d[6:]))(draw(digits))
    prefix = draw(st.sampled_from(["", "", "+1", "+1 ", "+1 ", "+1-", "+44 ", "1 ", "001 ", "＋1 "]))
    area = draw(st.sampled_from([f"({npa})", npa]))
    sep1, sep2 = draw(st.sampled_from(["", " ", "-"])), draw(st.sampled_from(["", " ", "-"]))
    edges = draw(st.sampled_from(["{}", "{}", "{}", " {} ", "  {}", "{}\t", "\u200b{}", "{} ext. 12"]))
    return draw(_near_miss(edges.format(f"{prefix}{area}{sep1}{exchange}{sep2}{line}"), _PHONE_INSERTIONS))


_REGIONS = st.sampled_from(["US", "US", "US", "us", "CA", "PR", "BS", "GB", "DE", "MX", "ZZ"])


@settings(max_examples=2000, deadline=None)
@given(raw=st.one_of(_phones(), _phones(), _phones(), st.text(max_size=20), st.none()), region=_REGIONS)
def test_phone_fast_path_gives_what_the_general_rules_give(raw: str | None, region: str) -> None:
    fast = identity._nanp_phone(raw, region)
    event("fast path" if fast else "general rules")
    if fast is not None:
        assert fast == identity._normalize_phone(raw, region)
    assert normalize_phone(raw, region) == identity._normalize_phone(raw, region)


_VALIDITY_REGIONS = ["US", "CA", "PR", "GB", "DE", "MX", "FR", "BR", "IN", "JP", "AU", "IT", "SG", "ZA"]


@st.composite
def _national_numbers(draw: st.DrawFn) -> tuple[str, phonenumbers.PhoneNumber]:
    """A region and one of its numbers: its example of some type with a digit changed, added or dropped,
    or any digits at all (most then invalid)."""
    region = draw(st.sampled_from(_VALIDITY_REGIONS))
    kind = draw(st.sampled_from(list(range(11))))  # phonenumbers' PhoneNumberType values
    example = phonenumbers.example_number_for_type(region, kind)
    if example is None or draw(st.booleans()):
        digits = draw(st.text(alphabet="0123456789", min_size=3, max_size=14))
    else:
        digits = phonenumbers.national_significant_number(example)
    digits = draw(_near_miss(digits, list("0123456789")))
    number = phonenumbers.PhoneNumber(
        country_code=phonenumbers.country_code_for_region(region), national_number=int(digits or "0")
    )
    return region, number


@settings(max_examples=3000, deadline=None)
@given(case=_national_numbers())
def test_region_validity_in_two_patterns_is_phonenumbers_own(case: tuple[str, phonenumbers.PhoneNumber]) -> None:
    region, number = case
    want = phonenumbers.is_valid_number_for_region(number, region)
    event("valid" if want else "not valid")
    assert identity._valid_in_region(region, phonenumbers.national_significant_number(number)) == want


_EMAIL_INSERTIONS = [*'aZ0._%+-@ <>:,;"()[]\\!#', "é", "＠", "Ａ", "\u00a0", "\u200b", "\x00", "\t"]


@st.composite
def _emails(draw: st.DrawFn) -> str:
    """Plain addresses in both cases, padded or not, and their near misses (wrappers, odd characters, length)."""
    local = draw(st.text(alphabet="abcdefXYZ0189._%+-", min_size=1, max_size=12))
    local *= draw(st.sampled_from([1, 1, 1, 1, 25]))  # sometimes past the 254-character limit
    labels = draw(st.lists(st.text(alphabet="abcXYZ09-", min_size=1, max_size=6), min_size=1, max_size=3))
    tld = draw(st.sampled_from(["com", "Com", "c", "io", "co.uk"]))
    address = f"{local}@{'.'.join(labels)}.{tld}"
    wrap = draw(st.sampled_from(["{}", "{}", " {} ", "  {}", "{}\t", ".{}", "{}.", "<{}>", "mailto:{}", "\u00a0{}"]))
    return draw(_near_miss(wrap.format(address), _EMAIL_INSERTIONS))


@settings(max_examples=2000, deadline=None)
@given(raw=st.one_of(_emails(), _emails(), _emails(), st.text(max_size=20), st.none()), gmail=st.booleans())
def test_email_fast_path_gives_what_the_general_rules_give(raw: str | None, gmail: bool) -> None:
    fast = identity._simple_email(raw)
    event("fast path" if fast else "general rules")
    if fast is not None:
        assert fast == identity._normalize_email(raw)
    slow = identity._normalize_email(raw)
    want = identity.Normalized(google_email(slow.value), None, slow.reason) if gmail and slow.value else slow
    assert normalize_email(raw, gmail_canonical=gmail) == want


@pytest.mark.parametrize(
    ("raw", "region", "want"),
    [
        ("+1 415 2000001", "US", "+14152000001"),  # the shapes of the scale benchmark's source
        ("(650) 2000001", "US", "+16502000001"),
        ("+1 (650) 253-0000", "DE", "+16502530000"),
        ("650-253-0000", "CA", "+16502530000"),
        ("+1 150 2000001", "US", None),  # not the fast path's shape: left to phonenumbers.parse
        ("650 253 0000", "GB", None),  # not a +1 region
    ],
)
def test_phone_fast_path_takes_the_common_shapes(raw: str, region: str, want: str | None) -> None:
    fast = identity._nanp_phone(raw, region)
    assert (fast.value if fast else None) == want


def test_email_fast_path_takes_the_common_shapes() -> None:
    assert identity._simple_email("user1@example.com") == identity.Normalized("user1@example.com")
    assert identity._simple_email(" User7@Example.com ") == identity.Normalized("user7@example.com")
    assert identity._simple_email("<user@example.com>") is None
    assert identity._simple_email("user@example.com.") is None


def test_us_numbers_are_validated_once() -> None:
    """The installed phonenumbers lists the US first among +1's regions, so a US match settles validity."""
    assert identity._US_FIRST
    toronto = phonenumbers.PhoneNumber(country_code=1, national_number=4165550123)  # Canada: both checks
    assert identity._valid_nanp(toronto) == phonenumbers.is_valid_number(toronto)
