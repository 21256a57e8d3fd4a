"""MorphNet for ONNX: find prunable channel groups, check surgery, prune to a learned structure.

The CLI is a thin layer over the Python API: parse arguments, call it, print. Bad input exits 2 with
one line on stderr.
"""

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
    parser = argparse.ArgumentParser(prog="morphnet-onnx", description=__doc__.splitlines()[0],
                                     epilog="Exit codes: 0 success, 1 check failed or internal error, 2 bad input.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="channel groups, what they cost, and what can be pruned")
    _add_model_options(p)
    p.add_argument("--hardware", metavar="NAME|PEAK/BW",
                   help="latency roofline: K80, P4, T4, P100, V100 (default), TPUv2, or PEAK_GFLOPS/BANDWIDTH_GBS")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.set_defaults(run=_inspect)

    p = sub.add_parser("prune", help="remove the channels a structure file marks dead; write a smaller model")
    _add_model_options(p)
    p.add_argument("--structure", required=True, metavar="S.json", help="structure file (docs/structure.md)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the pruned model")
    p.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="keep every pruned width a multiple of N (adds the channels with the largest gates)")
    p.add_argument("--save-structure", metavar="S.json", help="also write the structure as applied")
    p.add_argument("--approximate-borders", action="store_true",
                   help="remove channels whose constant value a padded conv spreads unevenly, folding the "
                        "interior value into the bias (exact except at the borders; fine-tune afterwards)")
    p.set_defaults(run=_prune)

    p = sub.add_parser("check", help="prove on random data that pruning this model is exact")
    _add_model_options(p)
    p.add_argument("--fraction", type=float, default=0.5,
                   help="share of every prunable group's channels to remove (1.0 also removes whole branches)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=_check)
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


def _prune(args: argparse.Namespace) -> int:
    from .pruning import prune
    from .report import human

    if args.round_to < 1:
        raise MorphNetError(f"--round-to {args.round_to}: must be 1 or more")
    result = prune(args.model, args.structure, args.output, input_shapes=parse_input_shapes(args.input_shape),
                   keep=args.keep, round_to=args.round_to, approximate_borders=args.approximate_borders)
    if args.save_structure:
        result.structure.save(args.save_structure, result.analysis, str(args.model))
    print(f"wrote {args.output}: FLOPs {human(result.flops_before)} -> {human(result.flops_after)} "
          f"({result.flops_after / result.flops_before:.1%}), params {human(result.params_before)} -> "
          f"{human(result.params_after)}, {len(result.removed_ops)} ops removed")
    for note in result.notes:
        print(f"[W] {note}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .checking import check
    from .report import human

    if not 0.0 <= args.fraction <= 1.0:
        raise MorphNetError(f"--fraction {args.fraction}: must be between 0 and 1")
    result = check(args.model, fraction=args.fraction, seed=args.seed,
                   input_shapes=parse_input_shapes(args.input_shape), keep=args.keep)
    if args.json:
        json.dump(result.to_dict(), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"[I] prunable groups hold {result.prunable_flops_share:.1%} of the FLOPs; {result.groups_pruned} "
              f"groups pruned, {result.groups_removed} removed whole")
        print(f"[I] FLOPs {human(result.flops_before)} -> {human(result.flops_after)}, params "
              f"{human(result.params_before)} -> {human(result.params_after)}")
        print(f"[I] worst output difference {result.max_error:.3g} of the tolerance (atol 1e-4, rtol 1e-3), "
              f"{result.seconds:.1f} s")
        for note in result.notes:
            print(f"[W] {note}")
        print("PASSED" if result.passed else "FAILED")
    return 0 if result.passed else 1


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
