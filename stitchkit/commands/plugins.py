"""``stitchkit plugins``: every registered policy, its parameters with defaults, and where it came from."""

from __future__ import annotations

import click

from stitchkit.registry import KINDS, get_registry


def _value(value) -> str:
    return "-" if value is None else str(value)


@click.command("plugins")
def command() -> None:
    """List every switch policy, mask policy and context provider with parameters, defaults and origin;
    then the model families and the pairs by name."""
    registry = get_registry()
    for kind in KINDS:
        click.echo(f"{kind} policies:")
        for name in registry.names(kind):
            entry = registry.entry(kind, name)
            params = ", ".join(f"{p}={_value(d)}" for p, d in entry.parameters()) or "no parameters"
            implied = {k: v for k, v in entry.params.items() if k in ("mask", "context")}
            extra = f" (preset of {entry.preset_of}" + "".join(f", {k}={v}" for k, v in implied.items()) + ")" \
                if entry.preset_of else ""
            click.echo(f"  {name}{extra}: {params}  [{entry.origin}]")
    click.echo("model families:")
    for name, family in registry.families.items():
        click.echo(f"  {name}: {family.description or '-'}  [{registry.family_origin(name)}]")
    click.echo("pairs:")
    for name, pair in registry.pairs.items():
        click.echo(f"  {name}: {pair.description or '-'}  [{pair.origin}]")
