"""``stitchkit plugins``: every registered policy, its parameters with defaults, and where it came from."""

from __future__ import annotations

import click

from stitchkit.registry import KINDS, get_registry


def _value(value) -> str:
    return "-" if value is None else str(value)


@click.command("plugins")
def command() -> None:
    """List every switch policy, mask policy and context provider with parameters, defaults and origin."""
    registry = get_registry()
    for kind in KINDS:
        click.echo(f"{kind} policies:")
        for name in registry.names(kind):
            entry = registry.entry(kind, name)
            params = ", ".join(f"{p}={_value(d)}" for p, d in entry.parameters()) or "no parameters"
            implied = {k: v for k, v in entry.params.items() if k in ("mask", "context")}
            sampler = entry.params.get("sampler")
            if sampler:  # the setting the preset's thresholds were chosen for
                implied["sampler"] = f"{sampler['steps']} steps at {sampler['height']}x{sampler['width']}"
            extra = f" (preset of {entry.preset_of}" + "".join(f", {k}={v}" for k, v in implied.items()) + ")" \
                if entry.preset_of else ""
            click.echo(f"  {name}{extra}: {params}  [{entry.origin}]")
