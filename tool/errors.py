"""User-facing errors: one readable message, a non-zero exit code, no traceback."""
import sys
from functools import wraps


class UserError(Exception):
    """A mistake the user can fix (bad setting, missing or corrupt data, wrong folder).

    Command-line entry points print its message on one line and exit with code 2;
    library callers can catch it like any exception.
    """


def cli(main):
    """Decorate a command-line entry point so that a UserError ends it cleanly."""

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
