"""The audiences as configured: what the pages show next to the state database's figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_out.config import LoadResult, SqlSource, load_audiences


@dataclass(frozen=True)
class AudienceInfo:
    """One audience as its YAML file defines it (or a name only the state database still knows)."""

    name: str
    dag_id: str
    owner: str = ""
    purpose: str = ""
    status: str = "unknown"  # active | paused | retired from the file; "unknown": no file loads any more
    role: str = ""
    tags: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()
    exclusions: tuple[str, ...] = ()
    holdout_percent: float | None = None
    default_region: str = "US"
    windows: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def yaml_text(self) -> str:
        return self.path.read_text(encoding="utf-8") if self.path and self.path.is_file() else ""


@dataclass(frozen=True)
class Catalog:
    audiences: dict[str, AudienceInfo]
    sql: dict[str, str]  # audience -> the SQL as loaded (SQL sources only)
    errors: tuple[str, ...] = ()

    def by_dag_id(self, dag_id: str) -> AudienceInfo | None:
        return next((a for a in self.audiences.values() if a.dag_id == dag_id), None)


def catalog_from(result: LoadResult) -> Catalog:
    audiences: dict[str, AudienceInfo] = {}
    sql: dict[str, str] = {}
    for name, loaded in result.audiences.items():
        c = loaded.config
        src = c.source
        windows = {k: str(v) for k, v in getattr(src, "windows", {}).items()}
        audiences[name] = AudienceInfo(
            name=name,
            dag_id=c.dag_id,
            owner=c.owner,
            purpose=c.purpose,
            status=c.status,
            role=c.role,
            tags=tuple(c.tags),
            destinations=tuple(d.label for d in c.destinations),
            exclusions=tuple(c.exclusions),
            holdout_percent=c.holdout.percent if c.holdout else None,
            default_region=c.identifiers.default_region,
            windows=windows,
            path=loaded.path,
        )
        if isinstance(src, SqlSource):
            try:
                sql[name] = loaded.sql_text()
            except OSError:  # shown as missing on the page; the DAG itself reports the broken file
                sql[name] = ""
    return Catalog(audiences, sql, tuple(str(e) for e in result.errors))


def load_catalog(directory: Path | None = None) -> Catalog:
    return catalog_from(load_audiences(directory))
