"""MorphNet for ONNX: find prunable channel groups, check surgery, prune to a learned structure.

The CLI is a thin layer over the Python API: parse arguments (parser.py), call it and print
(commands.py). Bad input exits 2 with one line on stderr.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

from ..errors import MorphNetError
from ..stopping import stopping_on_signals
from ..training.distributed import is_main
from .parser import build_parser


def _stdout_closed() -> int:
    """The reader of stdout went away (`inspect MODEL | head -3`): end quietly, as a command killed by
    SIGPIPE does (exit 141, what `set -o pipefail` reports for `cat` there). stdout is pointed at
    devnull so that the flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning of the library (a compressed .npz read into memory) as one line, as errors are."""
    print(f"[W] {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        with stopping_on_signals():
            return _run(args)
    finally:
        warnings.showwarning = shown


def _run(args) -> int:
    try:
        if not is_main():  # under torchrun every rank runs the command: rank 0 prints, all report errors
            sys.stdout = open(os.devnull, "w")
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except MorphNetError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"morphnet-onnx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # Training's interruption says where its checkpoint is and how to resume (errors.Interrupted).
        print(f"morphnet-onnx: {exc}" if str(exc) else "morphnet-onnx: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line unless --debug
        if args.debug:
            raise
        print(f"morphnet-onnx: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
