"""Outside plugins loaded one entry point at a time, so that one broken package cannot stop stitchkit.

pluggy's ``load_setuptools_entrypoints(group)`` imports every entry point of the group in one loop: the first
one whose import fails ends it with that traceback, and so every ``stitchkit`` command, ``stitchkit plugins``
included, died with a 47-line traceback naming neither the entry point nor how to skip it (issue 25). Here
each entry point is loaded by itself (pluggy's own call, ``name=`` one entry point); one that fails is
reported in one line naming the entry point, its distribution and the way to skip it, any half-registered
plugin is unregistered, and the others load as before. Commands that do not need it keep working; a policy
it would have registered is then unknown, and that error says the entry point failed
(:func:`unknown_name_note`).

``STITCHKIT_PLUGINS`` filters by **entry-point name** (``sandwich``), not by distribution name
(``stitchkit-sandwich``): a name that matches no installed entry point is reported once, with the entry
points that are installed, instead of silently loading nothing (tox 4 blocks named plugins the same way:
``src/tox/plugin/manager.py``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os

import pluggy

logger = logging.getLogger(__name__)

#: The environment variable that restricts which outside plugins load (comma-separated entry-point names).
ENV = "STITCHKIT_PLUGINS"

#: Entry points that failed to load in this process, name -> one-line reason (for :func:`unknown_name_note`).
FAILED: dict[str, str] = {}
#: Messages already logged in this process: a registry is built several times per command, warned once.
_REPORTED: set[str] = set()


def allowed_outside_plugins() -> set[str] | None:
    """The entry-point names ``STITCHKIT_PLUGINS`` lets load (``None``: unset, all of them)."""
    value = os.environ.get(ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _warn_once(message: str) -> None:
    if message not in _REPORTED:
        _REPORTED.add(message)
        logger.warning("%s", message)


def _dist_name(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"


def _installed(group: str) -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=group))


def _check_filter(allowed: set[str], installed: list[importlib.metadata.EntryPoint]) -> None:
    """Warn about each ``STITCHKIT_PLUGINS`` name that matches no installed entry point."""
    names = {ep.name for ep in installed}
    shown = ", ".join(sorted(f"{ep.name} ({ep.dist.name if ep.dist else '?'})" for ep in installed)) or "none"
    for name in sorted(allowed - names):
        by_dist = sorted(ep.name for ep in installed if ep.dist is not None and ep.dist.name == name)
        hint = (f"{name!r} is a distribution; its entry points: {', '.join(by_dist)}" if by_dist
                else f"installed entry points: {shown}")
        _warn_once(f"{ENV}: {name!r} matches no installed plugin's entry point, so it loads nothing; {ENV} "
                   f"filters by entry-point name, not package name ({hint})")


def load_outside_plugins(pm: pluggy.PluginManager, group: str) -> None:
    """Register every entry point of ``group`` that ``STITCHKIT_PLUGINS`` allows; one that fails to import or
    register is reported (one line, once per process) and skipped."""
    allowed = allowed_outside_plugins()
    installed = _installed(group)
    if allowed is not None:
        _check_filter(allowed, installed)
    wanted = [ep for ep in installed if allowed is None or ep.name in allowed]
    for entry_point in wanted:
        name = entry_point.name
        if pm.get_plugin(name) is not None or pm.is_blocked(name):
            continue
        try:
            pm.load_setuptools_entrypoints(group, name=name)
        except Exception as err:  # noqa: BLE001 - any failure of someone else's package: report and skip it
            if pm.get_plugin(name) is not None:  # registered before a hook failed validation
                pm.unregister(name=name)
            others = sorted({ep.name for ep in wanted} - {name})
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            FAILED[name] = reason
            _warn_once(f"plugin entry point {name!r} ({entry_point.value}) of {_dist_name(entry_point)} failed to "
                       f"load ({reason}); skipped, the other plugins are loaded; to skip it without this warning "
                       f"set {ENV}={','.join(others)} (the entry points to load), or uninstall "
                       f"{entry_point.dist.name if entry_point.dist else 'it'}")


def unknown_name_note() -> str:
    """What an "unknown policy" error adds: the entry points that failed and the filter, when either applies."""
    notes = [f"entry point {name!r} failed to load ({reason})" for name, reason in sorted(FAILED.items())]
    allowed = allowed_outside_plugins()
    if allowed is not None:
        notes.append(f"{ENV}={os.environ[ENV]!r} loads only the entry points it names")
    return ("; " + "; ".join(notes)) if notes else ""
