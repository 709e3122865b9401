"""The ``stitchkit`` command. Parses, calls the library, prints; no logic the library lacks.

Every refusal is one line on stderr, ``stitchkit <command>: error: <path>: <problem>; <allowed>``, with
exit code 2 and no traceback: click's own multi-line usage errors are folded into that form too.
"""

from __future__ import annotations

import importlib
import sys

import click

from stitchkit.commands.noise import configure_output, hoist_verbose
from stitchkit.errors import ConfigError, NonFiniteError

#: Subcommand modules; each exposes ``command``, a ``click.Command``.
COMMANDS = (
    "stitchkit.commands.run",
    "stitchkit.commands.report",
    "stitchkit.commands.plugins",
    "stitchkit.commands.plan",
    "stitchkit.commands.profile",
    "stitchkit.commands.train_pair",
    "stitchkit.commands.calibrate",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stitchkit")
@click.option("--verbose", "-v", is_flag=True,
              help="Log what happens behind the table (profiles measured or read from the cache, cache hooks) "
                   "and keep third-party notes and loading bars; accepted after the subcommand too.")
def group(verbose: bool) -> None:
    """Stitch a large and a small diffusion transformer inside one denoising loop."""
    configure_output(verbose)


for _module in COMMANDS:
    try:
        group.add_command(importlib.import_module(_module).command)
    except ModuleNotFoundError as _err:  # a command whose optional module is absent in this install
        if _err.name != _module:
            raise


def _command_name(args: list[str]) -> str:
    return next((a for a in args if not a.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (0 ok, 2 refused input, 1 failed run)."""
    from stitchkit.cost.threads import passive_openmp

    passive_openmp()  # before torch is imported: OpenMP reads its wait policy once
    args = hoist_verbose(list(sys.argv[1:] if argv is None else argv))
    prefix = f"stitchkit {_command_name(args)}".strip()
    try:
        group.main(args=args, prog_name="stitchkit", standalone_mode=False)
    except ConfigError as err:
        click.echo(f"{prefix}: error: {err}", err=True)
        return 2
    except click.UsageError as err:
        click.echo(f"{prefix}: error: {err.format_message()} (see `{prefix} --help`)", err=True)
        return 2
    except click.Abort:
        click.echo(f"{prefix}: aborted", err=True)
        return 130
    except NonFiniteError as err:
        click.echo(f"{prefix}: error: {err}", err=True)
        return 1
    except click.exceptions.Exit as exit_:
        return exit_.exit_code
    return 0


def console() -> None:
    """The console script: ``sys.exit(main())``."""
    sys.exit(main())


if __name__ == "__main__":
    console()
