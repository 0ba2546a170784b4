"""The ``container-ssl`` command line: one entry point, one sub-command per job.

Why: users drive everything from one CLI. Each sub-command lives in the module that does the work and
exposes ``configure_parser(parser)`` and ``run(args) -> int`` (the table is :mod:`container_ssl.commands`);
this file only wires them together and turns the expected errors
(:data:`~container_ssl.errors.EXPECTED_ERRORS`: a :class:`~container_ssl.errors.UserError`, or the model
code's :class:`~container_ssl.errors.InvalidArgument`) into a one-line message (exit status 2). Start-up
stays cheap: only the named command's module is imported; the top-level ``--help`` (and an unknown command)
needs none of them, as the table holds the one-line help.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from .commands import COMMANDS
from .errors import EXPECTED_ERRORS

__all__ = ["COMMANDS", "build_parser", "main", "one_line"]


class _Parser(argparse.ArgumentParser):
    """argparse with the package's error format: one ``error:`` line naming the option, exit status 2.

    Why: argparse prints its (multi-line) usage before the message; a bad option is bad input like any
    other and gets the same single line as a :class:`UserError`. Sub-parsers inherit this class.
    """

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise _BadOption(2)


class _BadOption(SystemExit):
    """A refused command line: ``main`` returns 2 (other callers see argparse's usual ``SystemExit(2)``)."""


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The full parser; ``only`` limits imports to one sub-command's module, ``only=""`` to none (fast start-up)."""
    parser = _Parser(
        prog="container-ssl",
        description="Self-supervised DINO pretraining and evaluation of CONTAINER-LIGHT and DeiT backbones.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            module = importlib.import_module(module_name)
            module.configure_parser(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in COMMANDS else "")
    try:
        args, extra = parser.parse_known_args(argv)
        # key=value overrides may follow options (argparse binds a '*' positional only once)
        all_overrides = all("=" in a and not a.startswith("-") for a in extra)
        if extra and isinstance(getattr(args, "overrides", None), list) and all_overrides:
            args.overrides += extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except _BadOption:
        return 2
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    try:
        return int(args._run(args) or 0)
    except EXPECTED_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def one_line(error: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with its traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:  # torch's ExceptionWrapper: the real message is on the last line
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__
