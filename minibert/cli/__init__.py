"""The `minibert` command line. Every failure prints one line on stderr (tracebacks with --debug).

Exit codes: 0 done; 1 an error (`minibert: error: ...`); 2 a malformed command line; 130 Ctrl-C; 143 SIGTERM
during extract; 141 when the reader of standard output went away (`minibert ... | head`), silently, as a
Unix tool killed by SIGPIPE.
"""

import argparse
import contextlib
import csv
import os
import re
import select
import sys
import warnings
from importlib import import_module

from ..errors import MiniBertError

# The command groups: modules of this package whose add_commands(sub) adds their commands (an add_X(sub) beside
# each cmd_X(args)), in the order `minibert --help` lists them. A new group is one more name here. Imported
# when the parser is built, not with this package: `python -m minibert.cli.train` must find train unloaded.
GROUPS = ("embed", "corpus", "analysis", "train", "heads", "serve", "rerank")


def package_version():
    from .. import __version__
    return __version__


def build_parser():
    parser = Parser(prog="minibert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"minibert {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        import_module(f"{__name__}.{group}").add_commands(sub)
    for command in sub.choices.values():        # global flags work after the command too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def join_negative_values(argv):
    """Let `--layers -4,-3,-2,-1` through: argparse would take the value for an option."""
    joined, i = [], 0
    while i < len(argv):
        if argv[i] == "--layers" and i + 1 < len(argv):
            joined.append(f"--layers={argv[i + 1]}")
            i += 2
        else:
            joined.append(argv[i])
            i += 1
    return joined


# API parameter names in warnings, as the flags that set them (`window=` -> `--window`).
FLAGS = {"max_length": "--max-length", "window": "--window", "stride": "--stride", "batch_size": "--batch-size",
         "layers": "--layers", "combine": "--combine", "pooling": "--pooling", "l2": "--l2", "folds": "--folds"}


def cli_terms(message):
    """A warning or error message as the command line's user needs it: flags for API parameters, one line."""
    message = re.sub(r"^minibert( \w+)?: ", "", " ".join(str(message).split()))
    return re.sub(r"\b(" + "|".join(FLAGS) + r")=", lambda m: FLAGS[m.group(1)], message)


def show_warning(message, category, filename, lineno, file=None, line=None):
    """warnings.showwarning for the command line: `minibert: warning: ...`, no Python source line."""
    print(f"minibert: warning: {cli_terms(message)}", file=sys.stderr if file is None else file)


def stdout_is_closed_pipe():
    """True when standard output is a pipe whose reader has gone (`minibert ... | head` after head exits)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))   # Linux: ERR, BSD: HUP
    except (AttributeError, OSError, ValueError):     # no real file descriptor (e.g. captured by a test)
        return False


def error_line(e):
    """One line for an error the commands did not turn into a MiniBertError (a file that cannot be written,
    bytes that are not UTF-8, a malformed CSV): what failed, where."""
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    if isinstance(e, UnicodeDecodeError):
        return f"not valid UTF-8 ({e.reason} at byte {e.start} of a block read); save the input as UTF-8"
    if isinstance(e, csv.Error):
        return f"cannot read the CSV/TSV input ({e})"
    return f"{type(e).__name__}: {e}"


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """A malformed command line: one line on stderr, exit 2 (argparse's code), pointing at --help."""
        self.exit(2, f"minibert: error: {message} (see {self.prog} --help)\n")


def main(argv=None):
    with warnings.catch_warnings():                    # restores showwarning when main() returns
        warnings.showwarning = show_warning
        return run_command(argv)


def run_command(argv):
    debug = False
    try:
        args = build_parser().parse_args(join_negative_values(sys.argv[1:] if argv is None else list(argv)))
        debug = args.debug
        args.run(args)
        sys.stdout.flush()                             # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError as e:
        if not stdout_is_closed_pipe():
            return report(e, debug)
        # Nobody reads any more: send what is left in the buffer nowhere, and exit as a tool killed by SIGPIPE.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (MiniBertError, OSError, UnicodeError, csv.Error) as e:
        return report(e, debug)
    except KeyboardInterrupt as e:                     # Ctrl-C, or SIGTERM during extract (Terminated)
        terminated = type(e).__name__ == "Terminated"
        print(f"minibert: {'terminated' if terminated else 'interrupted'}{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 143 if terminated else 130
    return 0


def report(e, debug):
    if debug:
        raise e
    message = e if isinstance(e, MiniBertError) else error_line(e)
    print(f"minibert: error: {cli_terms(message)}", file=sys.stderr)       # one line, whatever it quotes
    return 1


if __name__ == "__main__":
    sys.exit(main())
