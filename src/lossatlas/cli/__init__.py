"""The ``lossatlas`` command.

Each module of this package registers its subcommands on :data:`app` (``@app.command()``);
they are imported here in alphabetical order, so adding a command means adding a module.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

app = typer.Typer(
    name="lossatlas",
    help="Map the loss landscape of any PyTorch model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # wrapped docstring lines flow as one paragraph
)


def _load_commands() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_load_commands()


def main() -> None:
    """Entry point: bad input is reported as one line, not a traceback (exit code 2); so is
    Ctrl-C, with what was kept and the command that resumes (exit code 130)."""
    from lossatlas.core.errors import LossAtlasError

    try:
        app()
    except LossAtlasError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)
    except KeyboardInterrupt:  # typer turns Ctrl-C into exit code 130 (below); this is a guard
        _interrupted()
    except SystemExit as exc:
        if exc.code == 130:  # Ctrl-C during the command (typer's Exit(130))
            _interrupted()
        raise


def _interrupted() -> None:
    """Ctrl-C: one line saying what was kept and the command that resumes; exit code 130."""
    from lossatlas.cli._common import interrupted_line

    typer.secho(interrupted_line(sys.argv[1:]), err=True, fg="yellow")
    sys.exit(130)
