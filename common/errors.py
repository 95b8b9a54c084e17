"""User-facing errors: reported as one clear message, never as a traceback."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

# The last unindented "... UserError: message" line of a traceback text (what a DataLoader worker sends back).
_WORKER_MESSAGE = re.compile(r"^(?:[\w.]+\.)?UserError: ", re.MULTILINE)


def _unwrap_worker_message(message: str) -> str:
    """The original message of a UserError that a DataLoader worker re-wrapped with its traceback."""
    if not message.startswith("Caught UserError in ") or "Original Traceback" not in message:
        return message
    found = list(_WORKER_MESSAGE.finditer(message))
    return message[found[-1].end():].strip() if found else message


class UserError(Exception):
    """A mistake in the user's input (a path, an option, a file): the message says what and where.

    Raised inside a DataLoader worker, PyTorch re-creates it in the main process from the worker's
    traceback text; the constructor keeps only the original message.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_unwrap_worker_message(args[0]),)
        super().__init__(*args)


def run_cli(main: Callable[[], object]) -> None:
    """Run a command-line entry point (after checking the torch version); a `UserError` ends it with its message
    and exit status 2."""
    from common.versions import check_torch_version  # common.versions imports this module

    try:
        check_torch_version()
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except PermissionError as err:  # a file or folder the user cannot read or write, wherever it is met
        where = f" {err.filename}" if err.filename is not None else ""
        print(f"error: permission denied:{where} ({err.strerror or err})", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
