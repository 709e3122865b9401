"""``stitchkit report RUN_DIR``: rebuild a run's tables, pictures and plots from its records alone."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
def command(run_dir: str) -> None:
    """Rewrite results.md/csv, trace.jsonl, grid.png, masks.png, frontier.png, switch_steps.png, change.png."""
    import attrs

    from stitchkit.commands.run import closing_line
    from stitchkit.errors import ConfigError
    from stitchkit.experiments.config import ExperimentConfig
    from stitchkit.experiments.reports import write_report
    from stitchkit.experiments.run_folder import RESOLVED

    folder = Path(run_dir)
    if not (folder / RESOLVED).is_file():
        raise ConfigError("RUN_DIR", f"no {RESOLVED} in {folder}", "give the folder a `stitchkit run` wrote")
    config = attrs.evolve(ExperimentConfig.from_yaml(folder / RESOLVED), output=folder)
    written = write_report(config)
    click.echo((folder / "results.md").read_text().rstrip())
    click.echo(closing_line(folder, written))
