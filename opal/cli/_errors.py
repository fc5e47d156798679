"""The one place that turns an error into a line on stderr and an exit status."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from opal.errors import OpalError

__all__ = ["fail", "guarded"]


def fail(exc: OpalError, *, debug: bool = False) -> NoReturn:
    if debug:
        import traceback

        traceback.print_exception(exc)
    click.echo(f"opal: error: {exc.message}", err=True)
    sys.exit(exc.exit_code)


def guarded(fn: Callable[..., Any], *, debug: bool) -> Any:
    """Run ``fn``; map OpalError to its exit code and anything else to exit 1 without a traceback."""
    try:
        return fn()
    except OpalError as exc:
        fail(exc, debug=debug)
    except KeyboardInterrupt:
        click.echo("opal: interrupted", err=True)
        sys.exit(130)
    except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
        raise
    except OSError as exc:
        if debug:
            raise
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            click.echo("opal: error: the disk is full; free some space and run the command again", err=True)
        else:
            # The errno's name, never the path or text (they can name private files)
            click.echo(
                f"opal: internal error ({type(exc).__name__} {errno.errorcode.get(exc.errno or 0, '')}); "
                "rerun with --debug for details",
                err=True,
            )
        sys.exit(1)
    except Exception as exc:  # never a traceback (it might hold data) unless --debug
        if debug:
            raise
        click.echo(
            f"opal: internal error ({type(exc).__name__}); rerun with --debug for details", err=True
        )
        sys.exit(1)
