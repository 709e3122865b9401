"""``stitchkit plugins``: every registered policy and metric, its parameters with defaults, and its origin."""

from __future__ import annotations

import click

from stitchkit.registry import KINDS, get_registry

#: Section titles; a kind not listed (an outside hook's) is shown as "<kind> plugins".
TITLES = {"switch": "switch policies", "mask": "mask policies", "context": "context policies", "metric": "metrics"}


def _value(value) -> str:
    return "-" if value is None else str(value)


@click.command("plugins")
def command() -> None:
    """List every switch policy, mask policy, context provider and metric with parameters, defaults and
    origin; then the model families and the pairs by name."""
    registry = get_registry()
    for kind in KINDS:
        click.echo(f"{TITLES.get(kind, kind + ' plugins')}:")
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
    click.echo("model families:")
    for name, family in registry.families.items():
        click.echo(f"  {name}: {family.description or '-'}  [{registry.family_origin(name)}]")
    click.echo("pairs:")
    for name, pair in registry.pairs.items():
        click.echo(f"  {name}: {pair.description or '-'}  [{pair.origin}]")
