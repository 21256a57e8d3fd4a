"""The `morphnet-onnx` command: parse arguments, call the API, print. Bad input exits 2 with one line."""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from . import __version__
from .errors import MorphNetError
from .io import parse_input_shapes


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224",
                        help="static shape of an input with symbolic dims (repeatable; batch counts as 1)")
    parser.add_argument("--keep", action="append", metavar="REGEX",
                        help="never prune the channels of ops whose name matches (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="morphnet-onnx", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="channel groups, what they cost, and what can be pruned")
    _add_model_options(p)
    p.add_argument("--hardware", metavar="NAME|PEAK/BW",
                   help="latency roofline: K80, P4, T4, P100, V100 (default), TPUv2, or PEAK_GFLOPS/BANDWIDTH_GBS")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.set_defaults(run=_inspect)
    return parser


def _inspect(args: argparse.Namespace) -> int:
    from .inspection import inspect
    from .report import print_inspection

    report = inspect(args.model, input_shapes=parse_input_shapes(args.input_shape), keep=args.keep,
                     hardware=args.hardware)
    if not report.analysis.prunable_groups:
        reasons = sorted({r for g in report.analysis.groups for r in g.reasons})[:3]
        detail = f" ({'; '.join(reasons)})" if reasons else " (no Conv, Gemm or MatMul with weight initializers)"
        raise MorphNetError(f"{args.model}: nothing to prune{detail}")
    if args.json:
        json.dump(report.to_dict(), sys.stdout)
        sys.stdout.write("\n")
    else:
        print_inspection(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MorphNetError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"morphnet-onnx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("morphnet-onnx: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line unless --debug
        if args.debug:
            raise
        print(f"morphnet-onnx: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
