"""User-facing errors: one readable message, a non-zero exit code, no traceback."""
import os
import signal
import sys
from functools import wraps


class UserError(Exception):
    """A mistake the user can fix (bad setting, missing or corrupt data, wrong folder).

    Command-line entry points print its message on one line and exit with code 2;
    library callers can catch it like any exception.
    """


def shown(value, limit=80):
    """A value as an error message quotes it: its repr (quoted, one line), cut to `limit`
    characters; an integer too long for Python to print, by its size."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm's scancel, systemd and `timeout` send) while a command runs: raised in
    the main thread like Ctrl-C's KeyboardInterrupt, so the same clean-up runs (worker processes
    stopped, locks released, no half-written file; an interrupted trial resumes from its last.pt)."""


_SIGTERM_SEEN = []  # the handler's record: code that swallows the exception (torch.save's C++ writer) can ask


def terminate(signum=None, frame=None):
    """The SIGTERM handler: raise Terminated where the main thread is."""
    note_sigterm(signum)
    raise Terminated()


def note_sigterm(signum):
    """Record a SIGTERM for terminating(): every SIGTERM handler of this code calls it first."""
    _SIGTERM_SEEN.append(signum)


def terminating():
    """Whether SIGTERM arrived while this command ran. A SIGTERM inside torch.save's write reaches
    its C++ writer, which reports a failed write instead ("unexpected pos"): not a full disk."""
    return bool(_SIGTERM_SEEN)


def _say(line):
    """One line on stderr, if there is one to write to."""
    try:
        print(line, file=sys.stderr)
    except (OSError, AttributeError, ValueError):
        pass


def cli(main):
    """Decorate a command-line entry point so that a UserError ends it cleanly, and SIGTERM ends it
    as Ctrl-C does (exit code 143 instead of 130)."""

    @wraps(main)
    def wrapper(*args, **kwargs):
        _SIGTERM_SEEN.clear()
        try:
            previous = signal.signal(signal.SIGTERM, terminate)
        except ValueError:  # not the main thread: signals stay as they are
            previous = None
        for stream in (sys.stdout, sys.stderr):  # PYTHONIOENCODING=ascii: '±' printed as '\xb1', not a crash
            if stream is not None and hasattr(stream, "reconfigure"):  # None: started with the stream closed (>&-)
                stream.reconfigure(errors="backslashreplace")
        try:
            result = main(*args, **kwargs)
            if sys.stdout is not None:  # here, where a closed pipe is caught, not at the interpreter's exit
                sys.stdout.flush()
            return result
        except UserError as error:
            _say(f"error: {error}")
            sys.exit(2)
        except BrokenPipeError:  # `main.py --table RUN | head -1`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except OSError as error:  # what no reader or writer of this code turned into a UserError: a name too
            name = f" ({error.filename})" if error.filename else ""  # long, the output on a full disk, ...
            _say(f"error: {error.strerror or type(error).__name__}{name}")
            sys.exit(2)
        except RecursionError:  # pathlib walking a folder nested thousands deep
            _say("error: a folder (or file) nested too deep to be walked; give a shallower one")
            sys.exit(2)
        except Terminated:
            print("terminated (SIGTERM)", file=sys.stderr)
            sys.exit(143)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper
