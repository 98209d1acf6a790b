"""The `obbslim` command line.

Each subcommand lives in its own module in this package and defines ``add_parser(subparsers)``,
which registers an argparse parser whose ``func`` default is a thin wrapper over a library function.
Modules are discovered, so a new command is one new file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading

from obbslim import __version__
from obbslim.errors import ObbslimError, describe_os_error


class CLIError(Exception):
    """A user-facing error: printed as one clear line, exit status 2, no traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that cleanup runs (temp files removed, run lock released)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obbslim",
        description="Oriented-object YOLOv5 for aerial images, made small by network slimming and "
        "knowledge distillation. One subcommand per step; `obbslim COMMAND --help` for its options.",
    )
    parser.add_argument("--version", action="version", version=f"obbslim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)  # training installs its own while it runs
    try:
        result = args.func(args)
    except (CLIError, ObbslimError) as e:
        print(f"obbslim {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, read-only, permission denied, missing file: one line, no traceback
        print(f"obbslim {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2 if isinstance(e, FileNotFoundError) else 1
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
