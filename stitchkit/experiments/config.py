"""Experiment configuration: YAML is read here, and only here, into frozen attrs classes.

Every value is checked on the way in, policies included (they are built once through the registry so their
own validators speak), and every refusal is one :class:`ConfigError` line carrying the field's path, e.g.
``methods[2].switch.thresholds: must be strictly decreasing, got (0.3, 0.5)``. Unknown keys are errors:
a typo must not silently fall back to a default.

    name: quickstart
    pair: tiny-random            # or {large: <hub id or folder>, small: <...>, dtype: bfloat16, device: cuda}
    sampler: {steps: 20, guidance_scale: 4.0, height: 64, width: 64, max_sequence_length: 8}
                                     # a video pair also takes num_frames: 81 (its outputs: MP4 + frame strip)
    prompts: ["a red circle", ...]   # or prompts_file: prompts.txt, or {from: FILE, sample: N, seed: S}
    seeds: [0, 1]
    metrics: [psnr, ssim, {kind: clip_score, model: PATH}]   # metric plugins (stitchkit plugins)
    methods:
      - large                        # a switch policy or preset name
      - {name: hs30-static, switch: hybridstitch-30, mask: static}
      - {switch: {kind: hybridstitch, thresholds: [0.5, 0.3], mask_ratios: [0.3]}}
      - {switch: hybridstitch-30, grid: {mask_ratios: [[0.2], [0.3]]}}   # a sweep: one method a point
    output: runs/quickstart          # relative to the YAML file
    compile: true                    # regional torch.compile of both transformers, or {mode: ..., backend: ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import attrs
import yaml

from stitchkit.errors import ConfigError
from stitchkit.experiments.fields import list_of, mapping, only, positive, typed
from stitchkit.experiments.names import check_name, normalised
from stitchkit.experiments.prompts import read_prompts
from stitchkit.experiments.sweeps import MAX_METHODS, expand_grid, point_name, switch_kind_and_params
from stitchkit.experiments.trackers.spec import TrackerConfig, parse_trackers
from stitchkit.experiments.yaml_loader import load as load_yaml
from stitchkit.loop.caches import normalize_cache_spec
from stitchkit.loop.method_checks import cache_paths, check_method
from stitchkit.pipeline.compile import check_options as check_compile_options
from stitchkit.registry import get_registry
from stitchkit.values import check_guidance, check_seed, check_steps

DTYPES = ("float32", "float16", "bfloat16")


@attrs.frozen(kw_only=True)
class PairConfig:
    """A built-in pair by name, or two diffusers folders / hub ids."""

    name: str | None = None
    large: str | None = None
    small: str | None = None
    dtype: str = "float32"
    device: str = "cpu"

    @property
    def label(self) -> str:
        return self.name or f"{self.large}+{self.small}"


@attrs.frozen(kw_only=True)
class SamplerConfig:
    steps: int = 20
    guidance_scale: float = 4.0
    height: int | None = None
    width: int | None = None
    max_sequence_length: int = 256
    negative_prompt: str | None = None
    #: CPU threads (None: the pair's default, stitchkit.cost.threads.default_threads); ``--threads`` overrides.
    threads: int | None = None
    #: Units of one method generated in one batched loop (decisions stay per sample: stitchkit.loop.per_sample).
    batch_size: int = 1
    #: Frames per video (a video family's pair only; None: its default). Checked against the pair's VAE
    #: once it is loaded (:func:`stitchkit.pipeline.video.frames_for`), refused on an image pair.
    num_frames: int | None = None


@attrs.frozen(kw_only=True)
class MethodConfig:
    """One method: a switch policy plus (optionally) mask and context; ``None`` takes the preset's/default."""

    name: str
    switch: Any
    mask: Any = None
    context: Any = None
    #: A sweep point's parameters (``{"mask_ratios": [0.2]}``), empty for a method written out by hand.
    params: Mapping[str, Any] = attrs.field(factory=dict)
    #: The name of the method whose grid this point belongs to (``None``: not a sweep point).
    sweep_of: str | None = None
    #: diffusers' cache hooks for the large and/or small model (``StitchPipeline(cache=...)``), or ``None``.
    cache: Any = None


@attrs.frozen(kw_only=True)
class MetricConfig:
    """One metric plugin: its registered kind, the column it fills, and the parameters its factory takes."""

    kind: str
    params: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def name(self) -> str:
        return self.kind


@attrs.frozen(kw_only=True)
class ExperimentConfig:
    name: str
    pair: PairConfig
    sampler: SamplerConfig
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    methods: tuple[MethodConfig, ...]
    output: Path
    allow_unprofitable: bool = False
    metrics: tuple[MetricConfig, ...] = ()
    #: Where the report is also logged (TensorBoard, W&B, MLflow: :mod:`stitchkit.experiments.trackers`).
    trackers: tuple[TrackerConfig, ...] = ()
    source: Path | None = None
    #: Each prompt's index in its source: it names the unit (``p0042-s0``). Default: 0, 1, 2, ...
    prompt_indices: tuple[int, ...] = attrs.field()
    #: ``{from: ABSOLUTE PATH, sample, seed, field}`` when the prompts came from a file.
    prompt_source: Mapping[str, Any] | None = None
    #: ``torch.compile`` options for both transformers (``StitchPipeline.compile_repeated_blocks``), ``None``: eager.
    compile: Mapping[str, Any] | None = None
    #: The plugin registry the config was checked against; everything that runs the experiment uses it
    #: (handed in, not rebuilt). Not part of the config's value: equal configs may hold different registries.
    _registry: Any = attrs.field(default=None, eq=False, repr=False, alias="registry")

    @property
    def registry(self):
        """The registry this config was read with (one built for all plugins if it was made without)."""
        if self._registry is None:
            object.__setattr__(self, "_registry", get_registry())
        return self._registry

    @prompt_indices.default
    def _indices(self) -> tuple[int, ...]:
        return tuple(range(len(self.prompts)))

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    @property
    def units(self) -> list[tuple["MethodConfig", int, str, int]]:
        """(method, prompt index, prompt, seed) of every unit, the large-only baseline's first."""
        return [(m, pi, p, s) for m in ordered_methods(self.methods) for pi, p in zip(self.prompt_indices, self.prompts)
                for s in self.seeds]

    @classmethod
    def from_yaml(cls, path: str | Path, registry=None) -> "ExperimentConfig":
        """Read and validate an experiment file; policies are checked against ``registry`` (default: all)."""
        path = Path(path)
        try:
            data = load_yaml(path.read_text())
        except FileNotFoundError:
            raise ConfigError(str(path), "no such file", "give the path of an experiment YAML") from None
        except UnicodeDecodeError as err:
            raise ConfigError(str(path), f"is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                              f"{err.start})", "save the experiment file as UTF-8 YAML") from None
        except OSError as err:  # a folder, no permission
            raise ConfigError(str(path), f"cannot be read ({err.strerror or err})",
                              "give the path of a readable experiment YAML") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(str(path), f"not valid YAML{where}", "check the indentation and quoting") from None
        return cls.from_dict(data, base=path.parent, registry=registry, source=path)

    @classmethod
    def from_dict(cls, data: Any, *, base: Path = Path("."), registry=None, source: Path | None = None):
        data = mapping(data, "", "the experiment file must be a mapping of fields")
        only(data, "", ("name", "pair", "sampler", "prompts", "prompts_file", "seeds", "methods", "output",
                         "allow_unprofitable", "metrics", "max_methods", "compile", "trackers"))
        registry = registry if registry is not None else get_registry()
        name = typed(data.get("name", source.stem if source else "experiment"), "name", str)
        prompts = read_prompts(data, base)
        seeds = tuple(check_seed(s, f"seeds[{i}]") for i, s in enumerate(list_of(data.get("seeds", [0]), "seeds")))
        if not seeds:
            raise ConfigError("seeds", "is empty", "give at least one integer seed")
        for i, seed in enumerate(seeds):
            if seed in seeds[:i]:  # the unit would be generated and counted twice
                raise ConfigError(f"seeds[{i}]", f"duplicate seed {seed}", "list each seed once")
        sampler = _sampler(data.get("sampler", {}))
        methods = _methods(data.get("methods"), registry, sampler,
                           positive(data.get("max_methods", MAX_METHODS), "max_methods", int))
        output = Path(typed(data.get("output", f"runs/{name}"), "output", str))
        pair = _pair(data.get("pair", "tiny-random"), tuple(registry.pairs))
        metrics = _metrics(data.get("metrics", []), pair, registry, base)
        return cls(
            name=name, pair=pair, sampler=sampler, metrics=metrics,
            prompts=prompts.prompts, prompt_indices=prompts.indices, prompt_source=prompts.source, seeds=seeds, methods=methods, output=output if output.is_absolute() else base / output,
            allow_unprofitable=typed(data.get("allow_unprofitable", False), "allow_unprofitable", bool),
            source=source, registry=registry, compile=_compile(data.get("compile", False)),
            trackers=parse_trackers(data.get("trackers"), registry),
        )


#: The method every speedup and paired metric is measured against.
BASELINE = "large"


def ordered_methods(methods) -> list[MethodConfig]:
    """The large-only baseline first (if present), so the speedups are always against finished units."""
    return sorted(methods, key=lambda m: m.name != BASELINE)


def _compile(value: Any) -> dict[str, Any] | None:
    """``compile: true`` (stitchkit's torch.compile options), ``false``, or a mapping of options."""
    if isinstance(value, bool):
        return {} if value else None
    options = dict(mapping(value, "compile", "true, false or {mode: ..., backend: ...}"))
    check_compile_options(options)
    return options


def _pair(value: Any, known: tuple[str, ...]) -> PairConfig:
    if isinstance(value, str):
        if value not in known:
            raise ConfigError("pair", f"unknown built-in pair {value!r}",
                              "known: " + ", ".join(known) + "; or {large: ..., small: ...}")
        return PairConfig(name=value)
    data = mapping(value, "pair", "a built-in pair name or {large: ..., small: ...}")
    only(data, "pair", ("large", "small", "dtype", "device"))
    for field in ("large", "small"):
        if field not in data:
            raise ConfigError(f"pair.{field}", "missing", "a hub id or a diffusers folder")
    dtype = typed(data.get("dtype", "float32"), "pair.dtype", str)
    if dtype not in DTYPES:
        raise ConfigError("pair.dtype", f"unknown dtype {dtype!r}", "allowed: " + ", ".join(DTYPES))
    return PairConfig(large=typed(data["large"], "pair.large", str), small=typed(data["small"], "pair.small", str),
                      dtype=dtype, device=typed(data.get("device", "cpu"), "pair.device", str))


def _sampler(value: Any) -> SamplerConfig:
    data = mapping(value, "sampler", "e.g. {steps: 20, guidance_scale: 4.0}")
    fields = [f.name for f in attrs.fields(SamplerConfig)]
    only(data, "sampler", tuple(fields))
    kwargs: dict[str, Any] = {}
    if "steps" in data:
        kwargs["steps"] = check_steps(data["steps"], "sampler.steps")
    if "guidance_scale" in data:  # 0 <= g <= 1 is accepted: guidance off, as in diffusers (stitchkit.values)
        kwargs["guidance_scale"] = check_guidance(data["guidance_scale"], "sampler.guidance_scale")
    for field in ("height", "width", "max_sequence_length", "num_frames"):
        if field in data and data[field] is not None:
            kwargs[field] = positive(data[field], f"sampler.{field}", int)
    if data.get("threads") is not None:
        kwargs["threads"] = positive(data["threads"], "sampler.threads", int)
    if data.get("batch_size") is not None:
        kwargs["batch_size"] = positive(data["batch_size"], "sampler.batch_size", int)
    if data.get("negative_prompt") is not None:
        kwargs["negative_prompt"] = typed(data["negative_prompt"], "sampler.negative_prompt", str)
    return SamplerConfig(**kwargs)


def _method_name(spec: Any) -> str | None:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping) and isinstance(spec.get("kind"), str):
        return spec["kind"]
    return None


def _methods(value: Any, registry, sampler: SamplerConfig = SamplerConfig(),
             limit: int = MAX_METHODS) -> tuple[MethodConfig, ...]:
    if value is None:
        raise ConfigError("methods", "missing", "list at least one method, e.g. [large, small, hybridstitch-30]")
    methods, seen = [], set()
    for i, item in enumerate(list_of(value, "methods")):
        path = f"methods[{i}]"
        if isinstance(item, str):
            item = {"switch": item}
        data = mapping(item, path, "a policy name or {name, switch, mask, context, cache, grid}")
        only(data, path, ("name", "switch", "mask", "context", "cache", "grid"))
        if "switch" not in data and "cache" in data:  # a cache alone: the large model with diffusers' hooks
            data = {**data, "switch": "large"}
        if "switch" not in data:
            raise ConfigError(f"{path}.switch", "missing", "known: " + ", ".join(registry.names("switch")))
        name = data.get("name", _method_name(data["switch"]))
        if name is None:
            raise ConfigError(f"{path}.name", "missing", "name a method whose switch is a parameter mapping")
        name = check_name(typed(name, f"{path}.name", str), f"{path}.name")
        points: list[tuple[str, str, Any, dict]] = [(name, path, data["switch"], {})]
        if "grid" in data:
            kind, params = switch_kind_and_params(data["switch"], path)
            points = [(point_name(name, point), f"{path}.grid[{point_name(name, point)}]",
                       {"kind": kind, **params, **point}, point)
                      for point in expand_grid(data["grid"], f"{path}.grid", limit - len(methods))]
        if len(methods) + len(points) > limit:  # a grid's own size is refused by expand_grid, before expanding
            raise ConfigError(path, f"is method {len(methods) + 1}, more than max_methods ({limit:,})",
                              "list fewer methods, or raise max_methods")
        for method_name, where, switch, point in points:
            check_name(method_name, f"{path}.name")
            if normalised(method_name) in seen:  # one folder on a case-insensitive filesystem
                raise ConfigError(f"{path}.name", f"duplicate method name {method_name!r}"
                                  + ("" if method_name in {m.name for m in methods} else " (names differ only in case)"),
                                  "give each method its own name")
            seen.add(normalised(method_name))
            built = {}
            for kind, spec in (("switch", switch), ("mask", data.get("mask")), ("context", data.get("context"))):
                if spec is not None:  # built once here so each policy's validators speak
                    built[kind] = registry.create(kind, spec, path=f"{where}.{kind}" if point else f"{path}.{kind}")[0]
            _check_switch(built["switch"], sampler, where if point else path)
            check_method(built["switch"], mask=data.get("mask"), prefix=f"{where if point else path}.",
                         cache_roles=_check_cache(registry, data.get("cache"), f"{path}.cache"))
            methods.append(MethodConfig(name=method_name, switch=switch, mask=data.get("mask"),
                                        context=data.get("context"), params=point,
                                        sweep_of=name if "grid" in data else None, cache=data.get("cache")))
    if not methods:
        raise ConfigError("methods", "is empty", "list at least one method")
    return tuple(methods)


def _check_cache(registry, cache: Any, path: str) -> dict[str, str]:
    """Build a method's cache specs once, so each cache plugin's validators speak before anything runs;
    returns each cached model's role and the path of its spec."""

    roles = cache_paths(cache, path)
    for role, spec in normalize_cache_spec(cache, path).items():
        registry.create("cache", spec, path=roles[role])
    return roles


def _check_switch(switch: Any, sampler: SamplerConfig, path: str) -> None:
    """What a switch policy's own validators cannot see: the sampler's step count.

    A policy learns ``num_steps`` only at ``reset``, so a ``min_switch_step`` at or past the last step (a
    method that can never switch) is refused here, against ``sampler.steps``. (A ``mask:`` or cache the
    method would never use: :func:`stitchkit.loop.method_checks.check_method`.)"""
    low = getattr(switch, "min_switch_step", None)
    if isinstance(low, int) and not isinstance(low, bool) and low >= sampler.steps:
        raise ConfigError(f"{path}.switch.min_switch_step",
                          f"is {low}, at or past the last step ({sampler.steps - 1} of sampler.steps {sampler.steps})",
                          "the method could never switch: lower it or raise sampler.steps")


def _metrics(value: Any, pair: PairConfig, registry, base: Path) -> tuple[MetricConfig, ...]:
    """Each metric built once through the registry and asked whether it can run here (weights, pair),
    so that a run without a metric's weights is refused before any image is generated."""
    metrics, seen = [], set()
    for i, item in enumerate(list_of(value, "metrics")):
        path = f"metrics[{i}]"
        if isinstance(item, str):
            item = {"kind": item}
        data = dict(mapping(item, path, "a metric name or {kind: NAME, ...parameters}"))
        kind = data.pop("kind", None)
        if not isinstance(kind, str):
            raise ConfigError(f"{path}.kind", "missing or not a string", "known: " + ", ".join(registry.names("metric")))
        for key in ("model", "reference", "features", "weights"):  # paths are relative to the YAML
            if isinstance(data.get(key), str) and not Path(data[key]).expanduser().is_absolute() \
                    and (base / data[key]).exists():
                data[key] = str((base / data[key]).resolve())
        metric, _ = registry.create("metric", {"kind": kind, **data} if data else kind, path=path)
        if kind in seen:
            raise ConfigError(f"{path}.kind", f"duplicate metric {kind!r}", "list each metric once")
        seen.add(kind)
        check = getattr(metric, "check", None)
        if check is not None:
            try:
                check(pair_name=pair.name)
            except ConfigError as err:
                raise err.at(path) from None
        metrics.append(MetricConfig(kind=kind, params=data))
    return tuple(metrics)
