"""Destination registry: ``type`` in an audience file -> the class that implements it.

Adding a destination is one new module that defines a settings model and a ``Destination`` subclass,
decorated with ``@register``, plus its import below.
"""

from __future__ import annotations

from data_out.destinations.base import Destination

REGISTRY: dict[str, type[Destination]] = {}


def register(cls: type[Destination]) -> type[Destination]:
    if cls.type_name in REGISTRY:
        raise RuntimeError(f"destination type {cls.type_name!r} registered twice")
    REGISTRY[cls.type_name] = cls
    return cls


def destination_class(type_name: str) -> type[Destination]:
    try:
        return REGISTRY[type_name]
    except KeyError:
        raise KeyError(f"unknown destination type {type_name!r}; known types: {', '.join(sorted(REGISTRY))}") from None


# Imported for their @register side effect; keep alphabetical.
import data_out.destinations.google.destination  # noqa: E402,F401
import data_out.destinations.google_ads.destination  # noqa: E402,F401
import data_out.destinations.meta.destination  # noqa: E402,F401
import data_out.destinations.segment.destination  # noqa: E402,F401
import data_out.destinations.tiktok.destination  # noqa: E402,F401
import data_out.destinations.warehouse.destination  # noqa: E402,F401
import data_out.destinations.webhook.destination  # noqa: E402,F401
