"""Audience files: the shipped ones load; broken ones name the file, the field and the fix."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from data_out.config import AUDIENCES_DIR_ENV, DEFAULT_AUDIENCES_DIR, audiences_dir, load_audiences
from tests.conftest import write_audience

GOOD = """
    name: {name}
    owner: retention-team
    purpose: test
    source:
      sql_file: q.sql
      windows: {{cart_since: 6h, lapsed_before: 75d}}
    destinations:
      - type: warehouse
"""


def good(directory: Path, name: str = "good_audience_v1") -> Path:
    (directory / "q.sql").parent.mkdir(parents=True, exist_ok=True)
    (directory / "q.sql").write_text("SELECT 1 AS customer_id, 'a@b.co' AS email")
    return write_audience(directory, name, GOOD.format(name=name))


def test_the_shipped_audiences_load():
    result = load_audiences(DEFAULT_AUDIENCES_DIR)
    assert result.errors == []
    assert set(result.audiences) == {
        "cio_cart_abandon_6h_v1",
        "lapsed_75d_v1",
        "replenishment_21_35d_v1",
        "recent_purchasers_7d_v1",
        "cio_cart_msg_exposed_12h_v1",
        "clicked_3d_no_order_v1",
        "unengaged_45d_v1",
        "do_not_contact_v1",
    }
    cart = result.audiences["cio_cart_abandon_6h_v1"].config
    assert cart.source.windows == {"cart_since": dt.timedelta(hours=6)}
    # its own suppressions, then the do-not-contact list every targeting audience gets
    assert cart.exclusions == ["recent_purchasers_7d_v1", "cio_cart_msg_exposed_12h_v1", "do_not_contact_v1"]
    assert "SELECT" in result.audiences["lapsed_75d_v1"].sql_text()


def test_directory_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(AUDIENCES_DIR_ENV, str(tmp_path))
    assert audiences_dir() == tmp_path


def one_error(tmp_path: Path, name: str, body: str):
    good(tmp_path)
    write_audience(tmp_path, name, body)
    result = load_audiences(tmp_path)
    assert "good_audience_v1" in result.audiences, "a broken file must not stop the others"
    assert result.errors, "expected a problem to be reported"
    return result.errors


def test_malformed_yaml_names_the_line(tmp_path):
    [err] = one_error(tmp_path, "broken_v1", "name: broken_v1\nowner: [unclosed\n")
    assert err.path.name == "broken_v1.yaml"
    assert "invalid YAML at line" in str(err) and "Fix:" in str(err)


def test_unknown_field_is_named(tmp_path):
    body = GOOD.format(name="typo_v1") + "    holdot: {percent: 5, salt: abcd}\n"
    [err] = one_error(tmp_path, "typo_v1", body)
    assert err.field == "holdot"
    assert "remove `holdot`" in err.fix


def test_unknown_destination_type_lists_the_known_ones(tmp_path):
    body = GOOD.format(name="dest_v1").replace("type: warehouse", "type: myspace")
    [err] = one_error(tmp_path, "dest_v1", body)
    assert err.field.startswith("destinations.0")
    assert "warehouse" in str(err)


def test_bad_name_says_how_names_look(tmp_path):
    [err] = one_error(tmp_path, "Cart Abandoners", GOOD.format(name="Cart Abandoners"))
    assert err.field == "name" and "cio_cart_abandon_6h_v1" in err.message


def test_out_of_range_holdout(tmp_path):
    body = GOOD.format(name="hold_v1") + "    holdout: {percent: 80, salt: abcd}\n"
    [err] = one_error(tmp_path, "hold_v1", body)
    assert err.field == "holdout.percent" and "80" in err.message


def test_missing_required_field(tmp_path):
    body = GOOD.format(name="noowner_v1").replace("    owner: retention-team\n", "")
    [err] = one_error(tmp_path, "noowner_v1", body)
    assert err.field == "owner" and err.fix == "add `owner` to the file"


def test_file_name_must_match_audience_name(tmp_path):
    [err] = one_error(tmp_path, "other_name_v1", GOOD.format(name="mismatch_v1"))
    assert "rename the file to mismatch_v1.yaml" in err.fix


def test_missing_sql_file(tmp_path):
    body = GOOD.format(name="nosql_v1").replace("q.sql", "missing.sql")
    [err] = one_error(tmp_path, "nosql_v1", body)
    assert err.field == "source.sql_file"


def test_activation_destination_may_not_receive_the_holdout(tmp_path):
    body = GOOD.format(name="leak_v1").replace("- type: warehouse", "- type: memory\n        include: all")
    [err] = one_error(tmp_path, "leak_v1", body)
    assert "retarget the holdout" in err.message


def test_exclusion_of_an_unknown_audience_disables_the_audience(tmp_path):
    body = GOOD.format(name="excl_v1") + "    exclusions: [nobody_v1]\n"
    [err] = one_error(tmp_path, "excl_v1", body)
    assert err.field == "exclusions" and "nobody_v1" in err.message


def test_invalid_schedule_and_region(tmp_path):
    body = GOOD.format(name="sched_v1") + "    schedule: every tuesday\n    identifiers: {default_region: XX}\n"
    errs = one_error(tmp_path, "sched_v1", body)
    assert {e.field for e in errs} == {"schedule", "identifiers.default_region"}


def test_a_schedule_can_name_a_pipeline_asset(tmp_path):
    write_audience(
        tmp_path, "on_metrics_v1", GOOD.format(name="on_metrics_v1") + "    schedule: asset:message_metrics\n"
    )
    (tmp_path / "q.sql").write_text("SELECT 1 AS customer_id")
    result = load_audiences(tmp_path)
    assert result.errors == []
    assert result.audiences["on_metrics_v1"].config.schedule == "asset:message_metrics"


def test_an_unknown_pipeline_asset_names_the_ones_there_are(tmp_path):
    body = GOOD.format(name="on_nothing_v1") + "    schedule: asset:message_metric\n"
    [err] = one_error(tmp_path, "on_nothing_v1", body)
    assert err.field == "schedule"
    assert "names no Data Out pipeline Asset" in err.message and "asset:message_metrics" in err.message


def test_non_utf8_file(tmp_path):
    good(tmp_path)
    (tmp_path / "latin_v1.yaml").write_bytes(b"name: caf\xe9_v1\n")
    [err] = load_audiences(tmp_path).errors
    assert "not UTF-8" in err.message


@pytest.mark.parametrize("body", ["", "- just\n- a list\n"])
def test_empty_or_non_mapping_file(tmp_path, body):
    [err] = one_error(tmp_path, "empty_v1", body)
    assert "not a mapping" in err.message
