"""The plugin registry: every switch policy, mask policy and context provider stitchkit knows by name.

Built once per :func:`get_registry` call (no global plugin manager at import time; tests build their own).
The built-in policies are ordinary hookimpl modules listed in :data:`DEFAULT_PLUGINS` and go through the very
path an outside package's plugin does: ``pm.register(module)``, then the hooks are called with a
``register`` callback that collects what each plugin hands over. Outside packages are found through the
``stitchkit`` entry-point group, one at a time (:mod:`stitchkit.plugin_loading`: a broken one is reported in
one line and skipped); ``STITCHKIT_PLUGINS`` restricts which of them load (a comma-separated list of
entry-point names; empty string: none), and ``STITCHKIT_TRACE_HOOKS=1`` prints every hook call.

A name registered twice is an error that names both sources: silently letting one plugin shadow another
makes results depend on install order.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable, Iterable, Mapping

import attrs
import pluggy

import stitchkit.hookspecs as hookspecs
from stitchkit.errors import ConfigError
from stitchkit.plugin_loading import load_outside_plugins, unknown_name_note

def _builtin_families() -> tuple[str, ...]:
    """Every subpackage of ``stitchkit.families`` is a built-in family plugin (register_model_families,
    register_pairs), found rather than listed, so that nothing outside a family's folder names it; registered in
    ``stitchkit.families.REGISTRATION_ORDER``, then in name order."""
    import pkgutil

    import stitchkit.families as families

    found = {m.name for m in pkgutil.iter_modules(families.__path__) if m.ispkg}
    ordered = [name for name in families.REGISTRATION_ORDER if name in found]
    return tuple(f"stitchkit.families.{name}" for name in ordered + sorted(found - set(ordered)))


#: What ``mask=`` and ``context=`` default to when neither the call nor a preset names them.
DEFAULT_MASK = "top-k"
DEFAULT_CONTEXT = "kv-cache"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "stitchkit.policies.baselines",
    "stitchkit.policies.tstitch",
    "stitchkit.policies.srdiffusion",
    "stitchkit.policies.hybridstitch",
    "stitchkit.policies.topk",
    "stitchkit.policies.static",
    "stitchkit.policies.full_mask",
    "stitchkit.policies.kv_cache",
    "stitchkit.policies.full_large",
    "stitchkit.policies.caches",
    "stitchkit.policies.ras",
    "stitchkit.policies.reuse_every",
    "stitchkit.policies.corrector",
) + _builtin_families()

#: Built-in plugins of a kind the loop never needs, registered (and imported) only when that kind is first
#: looked up: the built-in metrics live in ``stitchkit.experiments``, which the loop must not import.
LAZY_PLUGINS: dict[str, tuple[str, ...]] = {"metric": ("stitchkit.experiments.metrics.builtin",),
                                             "tracker": ("stitchkit.experiments.trackers.builtin",)}

#: The three kinds of policy, keyed by the section name used in YAML and in ``StitchPipeline(switch=...)``.
KINDS: dict[str, str] = {
    "switch": "register_switch_policies",
    "mask": "register_mask_policies",
    "context": "register_context_providers",
    "metric": "register_metrics",
    "cache": "register_caches",  # diffusers' cache hooks (stitchkit.policies.caches)
    "tracker": "register_trackers",  # where reports are logged (stitchkit.experiments.trackers)
}

#: What an entry of each kind is called in messages (default: "<kind> policy").
NOUNS: dict[str, str] = {"metric": "metric", "tracker": "tracker"}

#: Keys of a preset that name the other policies it implies (``staticmask-30`` implies ``mask: static``).
PRESET_POLICY_KEYS = ("mask", "context")
#: Keyword arguments that are context, not parameters: a factory that names one gets it from the registry
#: building it (``registry``: itself, for a policy composed of other registered policies, e.g.
#: ``reuse-every``'s ``inner``), and it never appears among the parameters a YAML method may set.
CONTEXT_PARAMETERS = ("registry",)
#: A preset's sampler settings (``{steps, height, width}``): read by :mod:`stitchkit.sampler`, never a
#: parameter of the policy, and not settable from a call or a YAML method.
PRESET_SAMPLER_KEY = "sampler"


@attrs.frozen(kw_only=True)
class Entry:
    """One registered policy: its factory, where it came from, and (for switch policies) a preset's params."""

    kind: str
    name: str
    factory: Callable[..., Any]
    origin: str
    params: Mapping[str, Any] = attrs.field(factory=dict)
    preset_of: str | None = None

    def parameters(self) -> list[tuple[str, Any]]:
        """(name, default) of every keyword the factory takes, with a preset's values as the defaults."""
        out = []
        for p in inspect.signature(self.factory).parameters.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in CONTEXT_PARAMETERS:
                continue
            default = self.params.get(p.name, None if p.default is p.empty else p.default)
            out.append((p.name, default))
        return out


@attrs.frozen(kw_only=True)
class PairEntry:
    """One registered model pair: ``loader()`` -> ``(large, small)`` for ``StitchPipeline.from_pipelines``."""

    name: str
    loader: Callable[[], tuple[Any, Any]]
    origin: str
    description: str = ""


class Registry:
    """Name -> factory for each policy kind, filled by the plugin hooks; also the model families and the
    model pairs by name."""

    def __init__(self, plugin_manager: pluggy.PluginManager) -> None:
        self.plugin_manager = plugin_manager
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._collected: set[str] = set()
        for kind in KINDS:
            if kind not in LAZY_PLUGINS:
                self._collect(kind)
        #: Model families (``Family``) and pairs by name, with where each came from.
        self.families: dict[str, Any] = {}
        self.pairs: dict[str, PairEntry] = {}
        self._origins: dict[tuple[str, str], str] = {}
        self._call_each("register_model_families", self._add_family)
        self._call_each("register_pairs", self._add_pair)

    def _collect(self, kind: str) -> None:
        """Call ``kind``'s hook of every plugin (registering its lazy built-ins first), once."""
        if kind in self._collected:
            return
        self._collected.add(kind)
        pm = self.plugin_manager
        for name in LAZY_PLUGINS.get(kind, ()):
            if pm.get_plugin(name) is None:
                pm.register(importlib.import_module(name), name=name)
        self._call_each(KINDS[kind], lambda origin: self._collector(kind, origin))

    def _call_each(self, hook_name: str, make_register: Callable[[str], Callable[..., None]]) -> None:
        """Call ``hook_name`` one plugin at a time, handing each a ``register`` that knows its origin."""
        pm = self.plugin_manager
        plugins = pm.get_plugins()
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            only = pm.subset_hook_caller(hook_name, [p for p in plugins if p is not impl.plugin])
            only(register=make_register(_origin(pm, impl.plugin)))

    def _unique(self, what: str, name: str, origin: str) -> None:
        known = self._origins.get((what, name))
        if known is not None:
            raise ConfigError(f"{what} {name!r}", f"registered twice, by {known} and by {origin}",
                              "uninstall one plugin or restrict outside plugins with STITCHKIT_PLUGINS")
        self._origins[(what, name)] = origin

    def _add_family(self, origin: str) -> Callable[..., None]:
        def register(family) -> None:
            self._unique("model family", family.name, origin)
            self.families[family.name] = family

        return register

    def _add_pair(self, origin: str) -> Callable[..., None]:
        def register(name: str, loader: Callable[[], tuple[Any, Any]], description: str = "") -> None:
            self._unique("pair", name, origin)
            self.pairs[name] = PairEntry(name=name, loader=loader, origin=origin, description=description)

        return register

    # -- model families and pairs ---------------------------------------------------------------------
    def family_for_pipeline(self, pipeline: Any, path: str = "large"):
        """The family whose adapter wraps ``pipeline``; a ConfigError naming the known ones otherwise."""
        for family in self.families.values():
            if family.accepts_pipeline(pipeline):
                return family
        raise ConfigError(path, f"is a {type(pipeline).__name__}, which no model family runs",
                          "pass a pipeline of one of: " + ", ".join(sorted(self.families)))

    def family_for_transformer(self, transformer: Any, path: str = "transformer"):
        """The family whose masked runner wraps ``transformer``'s class."""
        for family in self.families.values():
            if family.accepts_transformer(transformer):
                return family
        raise ConfigError(path, f"is a {type(transformer).__name__}, which no model family masks",
                          "pass a transformer of one of: " + ", ".join(sorted(self.families)))

    def family_for_checkpoint(self, path: str, **loading: Any):
        """The family that loads the checkpoint at ``path`` (a hub id or folder): one that claims the folder,
        else the one listing its ``model_index.json``'s pipeline class."""
        for family in self.families.values():
            if family.claims_folder(path):
                return family
        from diffusers import DiffusionPipeline

        class_name = DiffusionPipeline.load_config(path, **loading).get("_class_name")
        for family in self.families.values():
            if class_name in family.pipeline_class_names:
                return family
        raise ConfigError("large", f"{path!r} holds a {class_name}, which no model family loads",
                          "known families: " + ", ".join(sorted(self.families)))

    def family_origin(self, name: str) -> str:
        """Where the model family ``name`` came from (a package's entry point, or the built-ins)."""
        return self._origins[("model family", name)]

    def pair(self, name: str, path: str = "pair") -> PairEntry:
        try:
            return self.pairs[name]
        except KeyError:
            raise ConfigError(path, f"unknown built-in pair {name!r}", "known: " + ", ".join(self.pairs))

    def _collector(self, kind: str, origin: str) -> Callable[..., None]:
        def register(name: str, factory: Callable[..., Any], presets: Mapping[str, Mapping] | None = None):
            self._add(Entry(kind=kind, name=name, factory=factory, origin=origin))
            for preset, params in (presets or {}).items():
                self._add(
                    Entry(kind=kind, name=preset, factory=factory, origin=origin, params=dict(params), preset_of=name)
                )

        return register

    def _add(self, entry: Entry) -> None:
        known = self.entries[entry.kind]
        if entry.name in known:
            raise ConfigError(
                f"{NOUNS.get(entry.kind, entry.kind + ' policy')} {entry.name!r}",
                f"registered twice, by {known[entry.name].origin} and by {entry.origin}",
                "uninstall one plugin or restrict outside plugins with STITCHKIT_PLUGINS",
            )
        known[entry.name] = entry

    def names(self, kind: str) -> list[str]:
        self._collect(kind)
        return sorted(self.entries[kind])

    def entry(self, kind: str, name: str, path: str | None = None) -> Entry:
        path = path or f"{kind}.kind"
        self._collect(kind)
        try:
            return self.entries[kind][name]
        except KeyError:
            noun = NOUNS.get(kind, f"{kind} policy")
            raise ConfigError(path, f"unknown {noun} {name!r}",
                              "known: " + ", ".join(self.names(kind)) + unknown_name_note()) from None

    def create(self, kind: str, spec: Any, path: str | None = None) -> tuple[Any, dict[str, Any]]:
        """Build a policy from a name, a ``{"kind": name, **params}`` dict, or pass an object through.

        Returns the policy and the other policies a preset implies (``{"mask": "static"}``), which the caller
        uses where the user did not name those explicitly.
        """
        from stitchkit.loop.protocol_checks import check_policy

        path = path or kind
        if not isinstance(spec, (str, Mapping)):
            return check_policy(kind, spec, path), {}
        if isinstance(spec, str):
            name, params = spec, {}
        else:
            params = dict(spec)
            name = params.pop("kind", None)
            if not isinstance(name, str):
                raise ConfigError(f"{path}.kind", "missing or not a string", "known: " + ", ".join(self.names(kind)))
        entry = self.entry(kind, name, f"{path}.kind" if isinstance(spec, Mapping) else path)
        merged = {**{k: v for k, v in entry.params.items() if k != PRESET_SAMPLER_KEY}, **params}
        implied = {k: merged.pop(k) for k in PRESET_POLICY_KEYS if k in merged}
        allowed = {name for name, _ in entry.parameters()}
        for key in merged:
            if key not in allowed:
                raise ConfigError(
                    f"{path}.{key}", f"unknown parameter of {name!r}", "allowed: " + (", ".join(sorted(allowed)) or "none")
                )
        if "registry" in inspect.signature(entry.factory).parameters:  # composed of other policies
            merged["registry"] = self
        try:
            policy = entry.factory(**merged)
        except ConfigError as err:
            raise err.at(path) from None
        except (TypeError, ValueError) as err:
            raise ConfigError(path, f"{name!r} refused its parameters: {err}") from None
        return check_policy(kind, policy, path), implied


def _origin(pm: pluggy.PluginManager, plugin: object) -> str:
    for dist_plugin, dist in pm.list_plugin_distinfo():
        if dist_plugin is plugin:
            return f"{dist.project_name} (entry point {pm.get_name(plugin)})"
    name = pm.get_name(plugin) or ""
    if name in DEFAULT_PLUGINS or any(name in names for names in LAZY_PLUGINS.values()):
        return "stitchkit (built-in)"
    if name.isdigit() or not name:  # registered without a name: pluggy names it by id()
        kind = plugin if isinstance(plugin, type) else type(plugin)
        return getattr(plugin, "__name__", None) or f"{kind.__module__}.{kind.__qualname__}"
    return name


def make_plugin_manager(
    *, builtins: Iterable[str] = DEFAULT_PLUGINS, entry_points: bool = True, extra: Iterable[object] = ()
) -> pluggy.PluginManager:
    """The plugin manager: hook specs, built-ins, outside entry points, then ``extra`` plugin objects."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in builtins:
        pm.register(importlib.import_module(name), name=name)
    if entry_points:
        load_outside_plugins(pm, hookspecs.ENTRY_POINT_GROUP)
    for plugin in extra:
        pm.register(plugin)
    if os.environ.get("STITCHKIT_TRACE_HOOKS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def get_registry(*, extra: Iterable[object] = (), entry_points: bool = True) -> Registry:
    """A fresh registry of every policy: built-ins, outside entry points, and ``extra`` plugin objects."""
    return Registry(make_plugin_manager(extra=extra, entry_points=entry_points))
