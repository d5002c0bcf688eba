"""The FastAPI app behind the Data Out pages (mounted by ``data_out_plugin.py`` at ``/data-out-ui``).

Handlers are plain ``def``: the state database is reached synchronously, and FastAPI runs them in its
thread pool, off the api-server's event loop.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Form, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine

from data_out.ui import auth, pages
from data_out.ui.catalog import Catalog, load_catalog
from data_out.ui.lookup import KINDS, Kind, lookup

#: prefix on the api-server; the external views' hrefs point here
URL_PREFIX = "/data-out-ui"
#: the Health tab's href, templated by the Airflow UI with the DAG id
HEALTH_HREF = URL_PREFIX + "/dags/{DAG_ID}/health"

_env = Environment(loader=PackageLoader("data_out.ui", "templates"), autoescape=select_autoescape(["html"]))
_env.filters["num"] = lambda v: "–" if v is None else f"{v:,}"
_env.filters["pct"] = lambda v, d=1: "–" if v is None else f"{v:.{d}f}%"
_env.filters["secs"] = lambda v: "–" if v is None else (f"{v:.1f}s" if v < 120 else f"{v / 60:.1f}m")
_env.filters["when"] = lambda v: "–" if v is None else f"{v:%Y-%m-%d %H:%M}"

_NO_STORE = {"Cache-Control": "no-store"}


def _json(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _json(asdict(value))
    if hasattr(value, "to_dict"):
        return _json(value.to_dict(orient="records"))
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def render(template: str, **context: Any) -> str:
    return _env.get_template(template).render(prefix=URL_PREFIX, **context)


def filter_rows(
    rows: list[pages.OverviewRow], tag: str | None, owner: str | None, destination: str | None, attention: bool
) -> list[pages.OverviewRow]:
    out = []
    for r in rows:
        if tag and tag not in r.audience.tags:
            continue
        if owner and owner != r.audience.owner:
            continue
        if destination and destination not in [c.name for c in r.destinations]:
            continue
        if attention and not r.attention:
            continue
        out.append(r)
    return out


def create_app(
    engine: Callable[[], Engine],
    catalog: Callable[[], Catalog] = load_catalog,
) -> FastAPI:
    """``engine``/``catalog`` are called per request: the api-server starts without the state database."""
    app = FastAPI(title="Data Out", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default answer repeats the input: a looked-up email must never come back in an error
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    signed_in = [auth.signed_in()]
    router = APIRouter()
    _overview_routes(router, engine, catalog, signed_in)
    _health_routes(router, engine, catalog)
    _lookup_routes(router, engine, catalog, signed_in)
    app.include_router(router)
    return app


def _overview_routes(
    router: APIRouter, engine: Callable[[], Engine], catalog: Callable[[], Catalog], signed_in: list[Any]
) -> None:
    """The overview of every audience: the page and its JSON twin, with the same filters."""

    def _overview(tag: str | None, owner: str | None, destination: str | None, attention: bool) -> dict[str, Any]:
        cat = catalog()
        rows = pages.overview(engine(), cat)
        return {
            "rows": filter_rows(rows, tag, owner, destination, attention),
            "all": rows,
            "tags": sorted({t for r in rows for t in r.audience.tags}),
            "owners": sorted({r.audience.owner for r in rows if r.audience.owner}),
            "destinations": sorted({c.name for r in rows for c in r.destinations}),
            "errors": cat.errors,
            "filters": {"tag": tag, "owner": owner, "destination": destination, "attention": attention},
        }

    @router.get("/", response_class=HTMLResponse, dependencies=signed_in)
    def overview_page(
        tag: str | None = None, owner: str | None = None, destination: str | None = None, attention: bool = False
    ) -> HTMLResponse:
        return HTMLResponse(render("overview.html", **_overview(tag, owner, destination, attention)))

    @router.get("/api/overview", dependencies=signed_in)
    def overview_json(
        tag: str | None = None, owner: str | None = None, destination: str | None = None, attention: bool = False
    ) -> JSONResponse:
        data = _overview(tag, owner, destination, attention)
        rows = [
            {
                "audience": r.audience.name,
                "dag_id": r.audience.dag_id,
                "owner": r.audience.owner,
                "status": r.status,
                "tags": list(r.audience.tags),
                "last_run": r.last_run,
                "duration_s": r.duration_s,
                "holdout_share_pct": r.holdout_share,
                "attention": r.attention,
                "destinations": [{k: v for k, v in asdict(c).items() if k != "spark"} for c in r.destinations],
            }
            for r in data["rows"]
        ]
        return JSONResponse(_json({"audiences": rows}))


def _health_routes(router: APIRouter, engine: Callable[[], Engine], catalog: Callable[[], Catalog]) -> None:
    """The "Health" tab of an audience DAG and its JSON twin, for those who may read the DAG's runs."""

    def _health(dag_id: str, runs: int) -> pages.Health:
        cat = catalog()
        info = cat.by_dag_id(dag_id)
        if info is None:
            raise HTTPException(404, f"{dag_id} is not a Data Out audience DAG")
        return pages.health(engine(), cat, info, runs)

    @router.get("/dags/{dag_id}/health", response_class=HTMLResponse, dependencies=[auth.may_read_dag()])
    def health_page(dag_id: str, runs: Annotated[int, Query(ge=2, le=2000)] = 100) -> HTMLResponse:
        try:
            model = _health(dag_id, runs)
        except HTTPException:  # the tab shows on every DAG: say what it is for instead of an error
            return HTMLResponse(render("not_audience.html", dag_id=dag_id), status_code=404)
        return HTMLResponse(render("health.html", h=model, runs=runs))

    @router.get("/api/dags/{dag_id}/health", dependencies=[auth.may_read_dag()])
    def health_json(dag_id: str, runs: Annotated[int, Query(ge=2, le=2000)] = 100) -> JSONResponse:
        h = _health(dag_id, runs)
        return JSONResponse(
            _json(
                {
                    "audience": h.audience.name,
                    "runs": h.recent,
                    "checks": h.check_table,
                    "open_breaches": h.breaches,
                    "guard_trips": h.guard_trips,
                    "lifecycle": h.lifecycle,
                }
            )
        )


def _lookup_routes(
    router: APIRouter, engine: Callable[[], Engine], catalog: Callable[[], Catalog], signed_in: list[Any]
) -> None:
    """The member lookup: a form, then the answer as a page or JSON, never cached (it names a person)."""

    @router.get("/lookup", response_class=HTMLResponse, dependencies=signed_in)
    def lookup_form() -> HTMLResponse:
        return HTMLResponse(render("lookup.html", kinds=KINDS, result=None, kind="email"), headers=_NO_STORE)

    user_dep = auth.user_dependency()

    @router.post("/lookup", response_class=HTMLResponse)
    def lookup_page(
        kind: Annotated[Kind, Form()], value: Annotated[str, Form(max_length=512)], user: Any = user_dep
    ) -> HTMLResponse:
        result = lookup(engine(), catalog(), kind, value, auth.user_name(user))
        return HTMLResponse(render("lookup.html", kinds=KINDS, result=result, kind=kind), headers=_NO_STORE)

    @router.post("/api/lookup")
    def lookup_json(
        kind: Annotated[Kind, Form()], value: Annotated[str, Form(max_length=512)], user: Any = user_dep
    ) -> JSONResponse:
        result = lookup(engine(), catalog(), kind, value, auth.user_name(user))
        return JSONResponse(_json(result), headers=_NO_STORE)
