"""The ``lossatlas`` command.

Each module of this package registers its subcommands on :data:`app` (``@app.command()``);
they are imported here in alphabetical order, so adding a command means adding a module. Three
modules hold no command: :mod:`~lossatlas.cli.options` (the options every command shares,
declared and checked once), :mod:`~lossatlas.batteries.resolve` (model, data and weights from those
options) and :mod:`~lossatlas.cli.interrupt` (what Ctrl-C prints).
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
    """Entry point: bad input is reported as one line, not a traceback (exit code 2): a
    ``LossAtlasError``'s sentence, or a usage error (an unknown option, a value of the wrong
    type) with the ``--help`` that lists the options; so is Ctrl-C, with what was kept and the
    command that resumes (exit code 130)."""
    from lossatlas.core.errors import LossAtlasError
    from lossatlas.core.progress import catch_interrupts

    usage = _click_exceptions()
    catch_interrupts()
    try:
        code = app(standalone_mode=False)
    except usage.NoArgsIsHelpError as exc:  # rich help is printed as the error is made
        if exc.format_message().strip():
            typer.echo(exc.format_message(), err=True)
        sys.exit(2)
    except usage.ClickException as exc:
        typer.secho(f"error: {_usage_line(exc)}", err=True, fg="red")
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.secho("aborted", err=True, fg="red")
        sys.exit(1)
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
    if code == 130:  # Ctrl-C during the command (typer's Exit(130), returned)
        _interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)


def _click_exceptions():
    """The exception classes of the click that typer runs on (typer 0.2x carries its own)."""
    try:
        from typer._click import exceptions
    except ImportError:  # typer on the click package
        from click import exceptions
    return exceptions


def _usage_line(exc) -> str:
    """A click usage error in one line: its message and where the options are listed."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    return f"{message} (see `{ctx.command_path} --help`)" if ctx is not None else message


def _interrupted() -> None:
    """Ctrl-C: one line saying what was kept and the command that resumes; exit code 130."""
    from lossatlas.cli.interrupt import interrupted_line

    typer.secho(interrupted_line(sys.argv[1:]), err=True, fg="yellow")
    sys.exit(130)
