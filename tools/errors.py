"""User-facing errors: reported as one clear message, never as a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in the user's input (a path, an option, a file): the message says what and where."""


def run_cli(main: Callable[[], object]) -> None:
    """Run a command-line entry point; a `UserError` ends it with its message and exit status 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
