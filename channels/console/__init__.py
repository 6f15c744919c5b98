"""The agent console the gateway serves under ``/console`` (docs/console.md).

:func:`console_routes` collects the routes of the console's modules, each a ``…_routes(ctx)`` function of a
:class:`ConsoleContext`: ``api`` (JSON under ``/console/api/…``), ``events`` (the live event stream), ``pages``
(the HTML pages and ``/console/static/…``), and — when present — ``extras`` (``extras_routes``: canned replies,
notes, tags, knowledge-base editing) and ``csat`` (``csat_routes``). Every API route's errors are
``{"error": {"code", "message"}}`` as everywhere in Kefu; every route passes ``ctx.auth.agent(request)`` first
(:mod:`channels.console.auth`).

Submodules import :class:`ConsoleContext` from :mod:`channels.console.context` (or from here: the optional
modules are imported by name, when the routes are built).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

from starlette.routing import BaseRoute

from channels.console.context import ConsoleContext

__all__ = ["ConsoleContext", "console_routes"]

# module (under channels.console) → its routes function; the first three are the console's core
MODULES = (("api", "api_routes"), ("events", "events_routes"), ("pages", "pages_routes"),
           ("extras", "extras_routes"), ("csat", "csat_routes"))


def console_routes(ctx: ConsoleContext) -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for module, function in MODULES:
        name = f"{__name__}.{module}"
        if importlib.util.find_spec(name) is None:  # an optional module not written (yet)
            continue
        make: Callable[[ConsoleContext], list[BaseRoute]] | None = getattr(importlib.import_module(name), function,
                                                                           None)
        if make is not None:
            routes += make(ctx)
    return routes
