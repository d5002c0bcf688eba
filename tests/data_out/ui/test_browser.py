"""A real browser (Debian's headless Chromium, driven by Playwright) on the pages, against the demo's data.

What a person would check: every audience has a row on the overview, the Health tab draws one point per
run, looking up a demo member names its audiences and its holdout status, and a stranger is answered as
no member. Screenshots of each page are saved under ``tests/artifacts/ui/`` (the path is printed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text

from data_out import state
from data_out.engine.holdout import holdout_threshold
from data_out.ui.app import URL_PREFIX, create_app
from data_out.ui.catalog import load_catalog
from tests.data_out.metrics.conftest import serving
from tests.data_out.ui.demo_data import RUNS, demo_state

CHROMIUM = os.environ.get("DATA_OUT_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "ui"
AUDIENCE = "recent_purchasers_7d_v1"  # three destinations, adds every run in the demo
HOLDOUT_AUDIENCE = "cio_cart_abandon_6h_v1"  # a holdout of some percent

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from playwright.sync_api import sync_playwright

    manager = create_auth_manager()
    manager.init()
    token = manager.generate_jwt(SimpleAuthManagerUser(username="browser-test", role="viewer"))
    catalog = load_catalog()
    with demo_state(tmp_path_factory.mktemp("ui-demo")) as demo:
        app = FastAPI()  # mounted as the api-server mounts a plugin's app
        app.mount(URL_PREFIX, create_app(lambda: demo.engine, lambda: catalog))
        with serving(app) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.add_cookies([{"name": "_token", "value": token, "url": url}])  # as Airflow's login sets it
            elsewhere: list[str] = []  # every request a page made off the server: refused, and recorded

            def offline(route: Any) -> None:
                if route.request.url.startswith(url):
                    route.continue_()
                else:
                    elsewhere.append(route.request.url)
                    route.abort()

            context.route("**/*", offline)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            yield {
                "url": url + URL_PREFIX,
                "page": context.new_page(),
                "demo": demo,
                "catalog": catalog,
                "elsewhere": elsewhere,
            }
            browser.close()
    print(f"\nscreenshots: {ARTIFACTS}")


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_the_overview_lists_every_audience(site):
    page = site["page"]
    page.goto(site["url"] + "/")
    shown = page.eval_on_selector_all("tr.audience", "rows => rows.map(r => r.dataset.audience)")
    shot(page, "overview")
    assert sorted(shown) == sorted(site["catalog"].audiences)
    # each configured destination of the audience has its own line with a sparkline of its runs
    row = page.locator(f'tr.audience[data-audience="{AUDIENCE}"]')
    assert sorted(row.locator("tr.destination").evaluate_all("rs => rs.map(r => r.dataset.destination)")) == sorted(
        site["catalog"].audiences[AUDIENCE].destinations
    )
    assert row.locator("svg.spark").first.get_attribute("data-points") == str(RUNS)


def test_the_health_tab_draws_one_point_per_run(site):
    page = site["page"]
    page.goto(f"{site['url']}/dags/audience__{AUDIENCE}/health")
    shot(page, "health")
    for destination in site["catalog"].audiences[AUDIENCE].destinations:
        assert page.locator(f'#chart-size circle.pt[data-series="{destination}"]').count() == RUNS
    assert page.locator("#chart-duration circle.pt").count() == RUNS
    assert page.locator("#chart-changes rect.bar.add").count() == RUNS
    # refreshes (memberships re-sent before they expire) are drawn per run with the figure the syncs recorded
    refreshed = page.eval_on_selector_all(
        "#chart-changes rect.bar.refresh", "bars => bars.map(b => Number(b.dataset.value))"
    )
    assert refreshed == _refreshed_per_run(site, AUDIENCE)
    assert page.locator("#runs tbody tr").count() == RUNS
    assert "SELECT" in page.locator("#sql").inner_text().upper()


def _refreshed_per_run(site: dict[str, Any], audience: str) -> list[int]:
    s = state.sync
    with site["demo"].engine.connect() as conn:
        rows = conn.execute(
            select(s.c.run_id, func.sum(s.c.refreshed)).where(s.c.audience == audience).group_by(s.c.run_id)
        ).all()
    return [int(n or 0) for _, n in sorted(rows)]


def _last_adds(site: dict[str, Any], key: str) -> set[tuple[str, str, str, str]]:
    """(audience, destination, run id, batch) of the person's acknowledged rows, as the demo's state holds them."""
    a, s = state.ack, state.sync
    with site["demo"].engine.connect() as conn:
        rows = conn.execute(
            select(a.c.audience, a.c.destination, s.c.run_id, a.c.acked_batch)
            .select_from(a.join(s, s.c.id == a.c.acked_sync))
            .where(a.c.member_key == key)
        ).all()
    return {(aud, d, str(run), "" if b is None else str(b)) for aud, d, run, b in rows}


def _a_demo_member(site: dict[str, Any]) -> tuple[str, str, dict[str, bool]]:
    """A held-out member of a demo audience with a holdout: (customer id, raw email from the sample
    warehouse, audience -> held out for every audience the person is in)."""
    demo = site["demo"]
    m = state.member
    catalog = site["catalog"].audiences
    held = HOLDOUT_AUDIENCE
    threshold = holdout_threshold(catalog[held].holdout_percent)
    with demo.engine.connect() as conn:
        key = conn.scalar(
            select(m.c.member_key).where(m.c.audience == held, m.c.bucket < threshold).order_by(m.c.member_key).limit(1)
        )
        rows = conn.execute(select(m.c.audience, m.c.bucket).where(m.c.member_key == key)).all()
    with demo.warehouse.connect() as conn:
        email = conn.scalar(text("SELECT email FROM customers WHERE customer_id = :k"), {"k": key})
    expected = {
        a: catalog[a].holdout_percent is not None and b < holdout_threshold(catalog[a].holdout_percent)
        for a, b in rows
        if a in catalog
    }
    return key, email, expected


def test_a_lookup_of_a_demo_member_names_its_audiences_and_holdout(site):
    page = site["page"]
    key, email, expected = _a_demo_member(site)
    assert expected[HOLDOUT_AUDIENCE] is True
    page.goto(site["url"] + "/lookup")
    page.select_option("select[name=kind]", "email")
    page.fill("input[name=value]", email)
    page.click("button[type=submit]")
    page.wait_for_selector("#result")
    shot(page, "lookup")
    members = page.eval_on_selector_all(
        'tr.answer[data-member="yes"]', "rows => rows.map(r => [r.dataset.audience, r.dataset.heldOut === 'yes'])"
    )
    assert dict(members) == expected
    verdict = page.inner_text("#verdict")
    assert all(a in verdict for a in expected)
    # per destination, the run and batch of the person's last add, as the state database recorded them
    shown = page.eval_on_selector_all(
        "tr.answer .dest-status .last-add",
        """spans => spans.map(s => [s.closest('tr').dataset.audience, s.closest('.dest-status').dataset.destination,
                                  s.dataset.run, s.dataset.batch])""",
    )
    expected_adds = _last_adds(site, key)
    assert expected_adds and {tuple(x) for x in shown} == expected_adds
    assert email.strip().lower() not in page.content().lower()  # never echoed back


def test_a_lookup_of_a_stranger_answers_not_a_member(site):
    page = site["page"]
    page.goto(site["url"] + "/lookup")
    page.fill("input[name=value]", "no.such.person@example.org")
    page.click("button[type=submit]")
    page.wait_for_selector("#result")
    assert page.get_attribute("#result", "data-found") == "0"
    assert "not a member" in page.inner_text("#verdict")
    assert page.locator('tr.answer[data-member="yes"]').count() == 0


def test_the_pages_ask_for_nothing_off_the_server(site):
    """Works offline: no CDN, no external font or script; every chart and style comes with the page."""
    page = site["page"]
    for path in ("/", f"/dags/audience__{AUDIENCE}/health", "/lookup"):
        page.goto(site["url"] + path, wait_until="networkidle")
    page.goto(f"{site['url']}/dags/audience__{AUDIENCE}/health", wait_until="networkidle")
    assert page.locator("svg.chart").count() >= 5
    assert site["elsewhere"] == []
