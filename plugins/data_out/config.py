"""Audiences as code: typed models for ``include/audiences/*.yaml`` and the loader.

One file per audience. A file that does not validate becomes a ``ConfigError`` naming the file, the
field and the fix; it never stops the other audiences from loading.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from croniter import croniter
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from sqlalchemy import text

from data_out.asset_names import ASSET_SCHEDULE_PREFIX, PIPELINE_ASSETS, pipeline_asset_key
from data_out.destinations import REGISTRY
from data_out.destinations.base import DestinationSettings, DriftSettings, GuardSettings
from data_out.errors import CONFIG_NEXT_STEP, ConfigurationError
from data_out.identity import is_valid_region

AUDIENCES_DIR_ENV = "DATA_OUT_AUDIENCES_DIR"
DEFAULT_AUDIENCES_DIR = Path(__file__).resolve().parents[2] / "include" / "audiences"

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,54}_v[0-9]{1,3}$")
SCHEDULE_PRESETS = {"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@once"}
#: column names that say they hold contact data (a member key must be an opaque id)
_CONTACT_COLUMN = re.compile(r"^(e_?mail|email_?address|phone|phone_?number|mobile|mobile_?number|msisdn)$", re.I)
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _parse_duration(v: Any) -> Any:
    """Accept ``6h``, ``75d``, ``30m`` as well as pydantic's own forms (seconds, ISO 8601)."""
    if isinstance(v, str) and (m := _DURATION_RE.match(v)):
        return dt.timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    return v


Duration = Annotated[dt.timedelta, BeforeValidator(_parse_duration)]


def _duration_between(v: dt.timedelta, low: dt.timedelta, high: dt.timedelta, allowed: str) -> dt.timedelta:
    if not low <= v <= high:
        raise ValueError(f"must be {allowed}")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SqlSource(_Model):
    """Membership from a SQL query against a warehouse connection.

    The query is run with bound parameters: ``:as_of`` (the run's point in time, UTC) and one parameter
    per entry in ``windows`` equal to ``as_of`` minus that duration, so time windows need no
    dialect-specific date arithmetic.
    """

    type: Literal["sql"] = "sql"
    conn_id: str = "data_out_warehouse"
    sql_file: str | None = Field(None, description="path relative to the audience file")
    query: str | None = None
    windows: dict[str, Duration] = Field(default_factory=dict)
    statement_timeout: Duration = Field(
        dt.timedelta(minutes=15),
        description="longest a statement of the query may run before it is cancelled (e.g. 15m, 2h)",
    )
    dialect: str | None = Field(
        None,
        description="the SQL dialect the query is written in (postgres, mysql, duckdb, sqlite, snowflake, bigquery, "
        "redshift, databricks); it is then checked at load time and translated for the connection before a run. "
        "Unset: the query is portable SQL, sent as written",
    )

    change_column: str | None = Field(
        None,
        description="a column of the query's rows that moves forward whenever a row's member key or identifier "
        "values change (e.g. updated_at, a timestamp or date). With it, a run reads only the rows changed since the "
        "last snapshot, plus a key-only pass for members who left; the full comparison still runs every "
        "full_compare_every and whenever the shortcut cannot be trusted. Applies when the query runs in the state "
        "database (Postgres); elsewhere every run compares in full",
    )
    change_lookback: Duration = Field(
        dt.timedelta(hours=1),
        description="how far before the last mark a run reads again, for rows whose writers committed late (e.g. 1h)",
    )
    full_compare_every: Duration = Field(
        dt.timedelta(days=1),
        description="longest time between two full comparisons of the source with the snapshot (e.g. 1d, 12h)",
    )

    @field_validator("change_column")
    @classmethod
    def _change_column(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", v):
            raise ValueError("must be a plain column name of the query's result (letters, digits, underscores)")
        return v

    @field_validator("change_lookback")
    @classmethod
    def _lookback(cls, v: dt.timedelta) -> dt.timedelta:
        return _duration_between(v, dt.timedelta(0), dt.timedelta(days=7), "between 0s and 7d (e.g. 1h)")

    @field_validator("full_compare_every")
    @classmethod
    def _full_every(cls, v: dt.timedelta) -> dt.timedelta:
        return _duration_between(v, dt.timedelta(minutes=1), dt.timedelta(days=30), "between 1m and 30d (e.g. 1d)")

    @field_validator("dialect")
    @classmethod
    def _dialect(cls, v: str | None) -> str | None:
        from data_out.dialects import WRITTEN_IN

        if v is not None and v not in WRITTEN_IN:
            raise ValueError(f"must be one of {', '.join(sorted(WRITTEN_IN))}")
        return v

    @field_validator("statement_timeout")
    @classmethod
    def _timeout(cls, v: dt.timedelta) -> dt.timedelta:
        return _duration_between(v, dt.timedelta(seconds=1), dt.timedelta(hours=24), "between 1s and 24h (e.g. 15m)")

    @model_validator(mode="after")
    def _one_of_file_or_query(self) -> SqlSource:
        if bool(self.sql_file) == bool(self.query):
            raise ValueError("give exactly one of sql_file (a .sql file beside the audience) or query")
        return self

    @field_validator("windows")
    @classmethod
    def _window_names(cls, v: dict[str, dt.timedelta]) -> dict[str, dt.timedelta]:
        for name in v:
            if not re.match(r"^[a-z][a-z0-9_]*$", name) or name == "as_of":
                raise ValueError(f"window {name!r} must be a lowercase name other than as_of")
        return v


class CustomerIOSource(_Model):
    """Membership of a Customer.io segment, read page by page through the App API."""

    type: Literal["customerio"]
    conn_id: str = "data_out_customerio"
    segment_id: int = Field(ge=1)
    page_size: int = Field(1000, ge=1, le=30_000)


def _source_tag(v: Any) -> str:
    return (v.get("type") or "sql") if isinstance(v, dict) else getattr(v, "type", "sql")


Source = Annotated[
    Annotated[SqlSource, Tag("sql")] | Annotated[CustomerIOSource, Tag("customerio")], Discriminator(_source_tag)
]


class Identifiers(_Model):
    """Source column for each identifier; ``null`` when the source has none."""

    email: str | None = "email"
    phone: str | None = None
    external_id: str | None = None
    default_region: str = Field("US", description="ISO country for phone numbers written without +")
    extra: dict[Literal["FN", "LN", "FI", "CT", "ST", "ZIP", "COUNTRY", "GEN"], str] = Field(
        default_factory=dict, description="Meta's optional match keys -> source columns"
    )

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not is_valid_region(v):
            raise ValueError(f"{v!r} is not an ISO 3166 alpha-2 region known to phonenumbers (e.g. US, GB, DE)")
        return v.upper()

    @model_validator(mode="after")
    def _at_least_one(self) -> Identifiers:
        if not (self.email or self.phone or self.external_id or self.extra):
            raise ValueError("map at least one of email, phone, external_id to a source column")
        return self


class Holdout(_Model):
    percent: float = Field(ge=0, le=50)
    salt: str = Field(min_length=4, description="change only to reshuffle the holdout on purpose")


class Alerts(_Model):
    recipients: list[str] = Field(default_factory=list)

    @field_validator("recipients")
    @classmethod
    def _emails(cls, v: list[str]) -> list[str]:
        for r in v:
            if not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", r):
                raise ValueError(f"{r!r} is not an email address")
        return v


def _destination_union() -> Any:
    models = tuple(cls.settings_model for cls in REGISTRY.values())
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007 - runtime-built union


class AudienceConfig(_Model):
    name: str
    owner: str = Field(min_length=1)
    purpose: str = Field(min_length=1)
    status: Literal["active", "paused", "retired"] = "active"
    schedule: str | None = Field(
        "@daily",
        description="a cron expression, a preset (@hourly, @daily, ...), or asset:<pipeline> to run each time "
        "that pipeline's Asset is updated (asset:message_metrics: after every message-metrics run)",
    )
    source: Source
    identifiers: Identifiers = Identifiers()  # before member_key: its validator reads the mapping
    member_key: str = "customer_id"
    holdout: Holdout | None = None
    exclusions: list[str] = Field(default_factory=list)
    destinations: list[_destination_union()] = Field(min_length=1)  # type: ignore[valid-type]  # built from REGISTRY
    guard: GuardSettings = GuardSettings()
    drift: DriftSettings = DriftSettings()
    alerts: Alerts = Alerts()
    tags: list[str] = Field(default_factory=list)
    role: Literal["targeting", "suppression"] = Field(
        "targeting", description="suppression lists are shipped to exclude people, never to target them"
    )
    suppress_everywhere: bool = Field(
        False, description="a do-not-contact list: excluded from every audience with an activation destination"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(
                "must be lowercase, stable and versioned, like cio_cart_abandon_6h_v1 "
                "(letters, digits, underscores; ends in _v<number>; at most 60 characters)"
            )
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        key = pipeline_asset_key(v)
        if key is not None:
            if key not in PIPELINE_ASSETS:
                known = ", ".join(ASSET_SCHEDULE_PREFIX + k for k in sorted(PIPELINE_ASSETS))
                raise ValueError(f"{v!r} names no Data Out pipeline Asset; use one of: {known}")
            return v
        if v is not None and v not in SCHEDULE_PRESETS and not croniter.is_valid(v):
            raise ValueError(
                f"{v!r} is neither a cron expression, one of {sorted(SCHEDULE_PRESETS)}, "
                f"nor {ASSET_SCHEDULE_PREFIX}<pipeline> (e.g. asset:message_metrics)"
            )
        return v

    @field_validator("member_key")
    @classmethod
    def _member_key_is_not_contact_data(cls, v: str, info: ValidationInfo) -> str:
        """The member key is stored raw in the state tables and sent as Segment's userId and in webhook
        payloads: a column of emails or phone numbers would spread them everywhere."""
        ids = info.data.get("identifiers")
        mapped = {}
        if isinstance(ids, Identifiers):
            mapped = {"identifiers.email": ids.email, "identifiers.phone": ids.phone}
            mapped.update({f"identifiers.extra.{k}": c for k, c in ids.extra.items()})
        used_as = [name for name, column in mapped.items() if column and column == v]
        if used_as or _CONTACT_COLUMN.match(v):
            what = f"the column mapped as {used_as[0]}" if used_as else "a column of contact data by its name"
            raise ValueError(
                f"member_key {v!r} is {what}; the member key is stored and sent unhashed, so it must be a "
                "stable customer id, never an email, a phone number or other personal data. Select your "
                "customer id (or another opaque id) and name its column here"
            )
        return v

    @model_validator(mode="after")
    def _suppress_everywhere_is_a_suppression(self) -> AudienceConfig:
        if self.suppress_everywhere and self.role != "suppression":
            raise ValueError("suppress_everywhere needs role: suppression")
        return self

    @model_validator(mode="after")
    def _destinations_unique_and_safe(self) -> AudienceConfig:
        seen: set[str] = set()
        for d in self.destinations:
            if d.label in seen:
                raise ValueError(f"two destinations are labelled {d.label!r}; give one a distinct `name`")
            seen.add(d.label)
            if REGISTRY[d.type].activation and d.include == "all":
                raise ValueError(
                    f"destination {d.label!r} is an activation channel: include must be 'targeted' "
                    "or 'holdout' (sending 'all' would retarget the holdout)"
                )
        if self.name in self.exclusions:
            raise ValueError("an audience cannot exclude itself")
        return self

    @property
    def dag_id(self) -> str:
        return f"audience__{self.name}"

    def drift_for(self, label: str) -> DriftSettings:
        """Audience thresholds with the destination's own overrides applied on top."""
        override = self.destination(label).drift
        if override is None:
            return self.drift
        return self.drift.model_copy(update=override.model_dump(exclude_unset=True))

    def destination(self, label: str) -> DestinationSettings:
        for d in self.destinations:
            if d.label == label:
                return d
        raise AudienceNotLoaded(f"audience {self.name!r} has no destination {label!r}")


class AudienceNotLoaded(ConfigurationError):
    """An audience (or one of its destinations) that no audience file defines, or whose file does not load."""

    next_step = CONFIG_NEXT_STEP


@dataclass
class LoadedAudience:
    config: AudienceConfig
    path: Path

    def sql_text(self) -> str:
        src = self.config.source
        assert isinstance(src, SqlSource), "only SQL sources have SQL"
        if src.query:
            return src.query
        assert src.sql_file is not None
        return (self.path.parent / src.sql_file).read_text(encoding="utf-8")


@dataclass(frozen=True)
class ConfigError:
    """A problem with one audience file: where, what, and what to do about it."""

    path: Path
    field: str | None
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.path}: {self.field}" if self.field else str(self.path)
        return f"{where}: {self.message}. Fix: {self.fix}"


@dataclass
class LoadResult:
    audiences: dict[str, LoadedAudience] = field(default_factory=dict)
    errors: list[ConfigError] = field(default_factory=list)

    def get(self, name: str) -> LoadedAudience:
        if name in self.audiences:
            return self.audiences[name]
        for e in self.errors:
            if e.path.stem == name:
                raise AudienceNotLoaded(f"audience {name!r} does not load: {e}")
        raise AudienceNotLoaded(f"no audience named {name!r} in {audiences_dir()}")


def audiences_dir() -> Path:
    return Path(os.environ.get(AUDIENCES_DIR_ENV) or DEFAULT_AUDIENCES_DIR)


def _fix_for(err: ErrorDetails) -> str:
    kind = err["type"]
    loc = ".".join(str(p) for p in err["loc"])
    if kind == "missing":
        return f"add `{loc}` to the file"
    if kind == "extra_forbidden":
        return f"remove `{loc}` or correct its spelling (see the audience reference in docs/audiences.md)"
    if kind in {"union_tag_invalid", "literal_error"}:
        return "use one of the values listed"
    if kind == "union_tag_not_found":
        return "add a `type` to the destination"
    return "correct the value as described"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _errors_from_validation(path: Path, exc: ValidationError) -> list[ConfigError]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        # a value helps; a whole section (a model-level check) is noise: the message names what is wrong
        if err["type"] not in {"missing", "extra_forbidden"} and "input" in err and not isinstance(err["input"], dict):
            msg = f"{msg} (got {_short(err['input'])})"
        out.append(ConfigError(path, loc, msg, _fix_for(err)))
    return out


def load_file(path: Path) -> LoadedAudience:
    """Load one audience file; raises ``ConfigFileError`` carrying every problem found in it."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigFileError([ConfigError(path, None, f"not UTF-8 text ({exc.reason})", "save it as UTF-8")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigFileError(
            [ConfigError(path, None, f"invalid YAML at {where}: {problem}", "fix the YAML syntax there")]
        ) from None
    if not isinstance(raw, dict):
        raise ConfigFileError(
            [ConfigError(path, None, "the file is not a mapping of fields", "start from an example audience")]
        )
    try:
        cfg = AudienceConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigFileError(_errors_from_validation(path, exc)) from None
    problems = []
    if cfg.name != path.stem:
        problems.append(
            ConfigError(
                path, "name", f"name {cfg.name!r} differs from the file name", f"rename the file to {cfg.name}.yaml"
            )
        )
    problems += _query_problems(path, cfg.source)
    if problems:
        raise ConfigFileError(problems)
    return LoadedAudience(cfg, path)


def _query_problems(path: Path, src: Any) -> list[ConfigError]:
    """Why the source query cannot run, found at load time: an import error naming the file, not a failed run."""
    if not isinstance(src, SqlSource):
        return []
    where = "source.sql_file" if src.sql_file else "source.query"
    query = src.query or ""
    if src.sql_file:
        sql = path.parent / src.sql_file
        if not sql.is_file():
            return [
                ConfigError(
                    path, where, f"{src.sql_file!r} does not exist", "point it at a .sql file beside the audience"
                )
            ]
        try:
            query = sql.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            return [
                ConfigError(
                    path,
                    where,
                    f"{src.sql_file!r} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                    "save it as UTF-8",
                )
            ]
        if not query.strip():
            return [ConfigError(path, where, f"{src.sql_file!r} is empty", "write the audience's SELECT in it")]
    # Every :name is a bound parameter (SQLAlchemy reads them in comments too); only as_of and the windows get values.
    unbound = sorted(set(text(query).compile().params) - {"as_of", *src.windows})
    if unbound:
        names = ", ".join(f":{n}" for n in unbound)
        return [
            ConfigError(
                path,
                where,
                f"the query uses {names}, but only :as_of and the windows ({', '.join(src.windows) or 'none'}) "
                "get values",
                f"add `{unbound[0]}: <duration>` to source.windows, or remove {names} from the SQL (and its comments)",
            )
        ]
    if src.dialect:
        from data_out.dialects import parse_problem

        problem = parse_problem(query, src.dialect)
        if problem:
            return [ConfigError(path, where, problem, f"write the audience's SELECT in {src.dialect} SQL")]
    return []


class ConfigFileError(ConfigurationError):
    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("; ".join(str(e) for e in errors), next_step=CONFIG_NEXT_STEP)
        self.errors = errors


def _apply_global_suppressions(result: LoadResult) -> None:
    """Add every ``suppress_everywhere`` audience to the exclusions of every activation audience."""
    dnc = sorted(n for n, a in result.audiences.items() if a.config.suppress_everywhere)
    for loaded in result.audiences.values():
        cfg = loaded.config
        activation = any(REGISTRY[d.type].activation for d in cfg.destinations)
        if cfg.role == "suppression" or not activation:
            continue
        missing = [n for n in dnc if n not in cfg.exclusions]
        if missing:
            loaded.config = cfg.model_copy(update={"exclusions": [*cfg.exclusions, *missing]})


def load_audiences(directory: Path | None = None) -> LoadResult:
    """Load every ``*.yaml``/``*.yml`` file; broken files are reported, never fatal to the others."""
    directory = directory or audiences_dir()
    result = LoadResult()
    if not directory.is_dir():
        result.errors.append(
            ConfigError(
                directory, None, "the audiences directory does not exist", f"create it or set {AUDIENCES_DIR_ENV}"
            )
        )
        return result
    for path in sorted(p for p in directory.iterdir() if p.suffix in {".yaml", ".yml"}):
        try:
            loaded = load_file(path)
        except ConfigFileError as exc:
            result.errors.extend(exc.errors)
            continue
        if loaded.config.name in result.audiences:
            other = result.audiences[loaded.config.name].path
            result.errors.append(ConfigError(path, "name", f"also used by {other}", "give each audience a unique name"))
            continue
        result.audiences[loaded.config.name] = loaded
    _apply_global_suppressions(result)
    # Exclusions must point at audiences that load: a missing suppression must stop the audience,
    # not silently target people it was meant to protect.
    changed = True
    while changed:  # until no audience depends on one that was just dropped
        changed = False
        for name, loaded in list(result.audiences.items()):
            missing = [x for x in loaded.config.exclusions if x not in result.audiences]
            if not missing:
                continue
            changed = True
            del result.audiences[name]
            result.errors.append(
                ConfigError(
                    loaded.path,
                    "exclusions",
                    f"excluded audience(s) {', '.join(missing)} do not exist or do not load",
                    "fix or add those audiences, or remove them from exclusions",
                )
            )
    return result
