"""User-facing errors: one clear paragraph, a non-zero exit, no traceback unless asked for."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input or a stopped run: the message names the offending value and what would be valid."""


def brief(values, limit: int = 8) -> str:
    """A short, readable listing of values for an error message."""
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


@contextlib.contextmanager
def reported_user_errors(debug: bool) -> Iterator[None]:
    """Turn a UserError into a one-paragraph message and exit code 2; re-raise with `debug=true`."""
    try:
        yield
    except UserError as error:
        if debug:
            raise
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]metarun error:[/] {error}", highlight=False)
        print("(run again with debug=true for the traceback)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
