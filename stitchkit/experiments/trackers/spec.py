"""``trackers:`` of an experiment: each a tracker name or ``{kind: NAME, ...parameters}``, checked against
the registry (and the tracker's package) when the YAML is read, so a missing package is refused before any
image is generated. Not part of ``config.resolved.yaml`` nor of any unit's key: trackers change where the
results are shown, never what they are, so adding one to a finished run regenerates nothing."""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from stitchkit.errors import ConfigError


@attrs.frozen(kw_only=True)
class TrackerConfig:
    kind: str
    params: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def spec(self) -> Any:
        return {"kind": self.kind, **self.params} if self.params else self.kind


def parse_trackers(value: Any, registry) -> tuple[TrackerConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("trackers", f"is a {type(value).__name__}", "a list, e.g. [tensorboard]")
    out: list[TrackerConfig] = []
    for i, item in enumerate(value):
        path = f"trackers[{i}]"
        data = {"kind": item} if isinstance(item, str) else item
        if not isinstance(data, Mapping) or not isinstance(data.get("kind"), str):
            raise ConfigError(path, "is not a tracker", "a name or {kind: NAME, ...}; known: "
                              + ", ".join(registry.names("tracker")))
        try:
            registry.create("tracker", dict(data), path=path)  # unknown kind, bad parameter, missing package
        except ConfigError as err:
            raise (err if err.path.startswith(path) else err.at(path)) from None
        if any(t.kind == data["kind"] for t in out):
            raise ConfigError(f"{path}.kind", f"duplicate tracker {data['kind']!r}", "list each tracker once")
        out.append(TrackerConfig(kind=data["kind"], params={k: v for k, v in data.items() if k != "kind"}))
    return tuple(out)
