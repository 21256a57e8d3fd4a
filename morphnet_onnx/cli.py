"""MorphNet for ONNX: find prunable channel groups, check surgery, prune to a learned structure.

The CLI is a thin layer over the Python API: parse arguments, call it, print. Bad input exits 2 with
one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback

from . import __version__
from .errors import MorphNetError
from .io import parse_input_shapes, refuse_overwriting
from .training.distributed import is_main


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the .onnx file")
    parser.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224",
                        help="static shape of an input with symbolic dims (repeatable; batch counts as 1)")
    parser.add_argument("--keep", action="append", metavar="REGEX",
                        help="never prune the channels of ops whose name matches (repeatable)")


def _add_picture_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plot", metavar="FILE.png|FILE.svg",
                        help="per-layer widths and FLOPs before and after (needs the extra `plot`: matplotlib)")
    parser.add_argument("--html", metavar="FILE.html",
                        help="one self-contained page: totals, the plot, the topology with removed ops marked, every op")


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
    p.add_argument("--cost-batch-size", type=int, default=1, metavar="B",
                   help="batch of the latency roofline (FLOPs and parameters stay per example)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("after", nargs="?", metavar="AFTER", help="a second model: what changed (the same as `diff`)")
    _add_picture_options(p)
    p.set_defaults(run=_inspect)

    p = sub.add_parser("diff", help="what changed between two models, or two structure files of one model")
    p.add_argument("before", help="the original .onnx (or a structure .json)")
    p.add_argument("after", help="the changed .onnx (or a structure .json, applied to --model)")
    p.add_argument("--model", dest="structure_model", metavar="MODEL.onnx",
                   help="the model structure files apply to (default: the .onnx side, else the model the file names)")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224",
                   help="static shape of an input with symbolic dims, for both models (repeatable)")
    p.add_argument("--hardware", metavar="NAME|PEAK/BW", help="latency roofline (see inspect; default V100)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    _add_picture_options(p)
    p.set_defaults(run=_diff)

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
    _add_picture_options(p)
    p.set_defaults(run=_prune)

    p = sub.add_parser("check", help="prove on random data that pruning this model is exact")
    _add_model_options(p)
    p.add_argument("--fraction", type=float, default=0.5,
                   help="share of every prunable group's channels to remove (1.0 also removes whole branches)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=_check)

    p = sub.add_parser("shrink", help="MorphNet: train with the resource regularizer, write the smaller model")
    _add_model_options(p)
    _add_training_options(p)
    budget = p.add_mutually_exclusive_group(required=True)
    _add_budget_options(budget)
    budget.add_argument("--strength", type=float, metavar="LAMBDA", help="manual mode: fixed regularization strength")
    p.add_argument("--regularizer", choices=["auto", "gamma", "group-lasso", "figs"], default="auto",
                   help="gamma: L1 on BatchNorm scales; group-lasso: filter RMS (BN folded); auto: by model; "
                        "figs: MorphNet's probabilistic gates (decides on p > 0.5, --threshold unused)")
    p.add_argument("--threshold", type=float, default=1e-2, help="a channel is alive while its gate is above this")
    p.add_argument("--grouping", choices=["max", "l2"], default="max",
                   help="how the gates of a channel written by several ops (a residual stream) combine: max "
                        "(MorphNet's default) or l2 (every member pushed; streams shrink too)")
    _add_roofline_options(p)
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="keep every pruned width a multiple of N")
    p.add_argument("--save-structure", metavar="OUT.json", help="also write the learned structure")
    p.add_argument("--structure", metavar="OUT.json", dest="old_structure", help=argparse.SUPPRESS)
    p.add_argument("--cut", choices=["budget", "end"], default=None,
                   help="when the model is cut: as soon as the learned structure meets the budget (the rest of "
                        "the steps train the smaller model), or at the end of the regularized steps")
    p.add_argument("--hold", action=argparse.BooleanOptionalAction, default=None,
                   help="bring the structure down to the budget progressively, holding removed channels at zero")
    p.add_argument("--hold-from", type=float, metavar="F", help="share of the steps where --hold starts")
    p.add_argument("--hold-until", type=float, metavar="F", help="share of the steps where --hold reaches the budget")
    p.add_argument("--proximal", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the regularizer as a proximal step on the gates (they reach exactly zero) "
                        "instead of through the loss's gradient")
    p.add_argument("--reach", type=float, metavar="F",
                   help="share of the steps within which the regularizer's strength may grow 1000-fold")
    p.add_argument("--finetune-steps", type=int, metavar="N",
                   help="steps of plain training of the pruned model, out of --steps (default: --finetune-share "
                        "of them; 0: write the model as cut)")
    p.add_argument("--finetune-share", type=float, metavar="F",
                   help="share of the steps kept for training the pruned model (at least; --cut budget may leave more)")
    p.add_argument("--finetune-lr", type=float, metavar="F", help="their learning rate, as a share of --lr")
    p.add_argument("--finetune-schedule", choices=["cosine", "continue"], default=None,
                   help="cosine from that rate, or the training schedule continued where the cut interrupted it")
    p.add_argument("--distill", choices=["auto", "on", "off"], default=None,
                   help="learn from the input model's predictions too (auto: when it scores well on the data)")
    p.add_argument("--distill-weight", type=float, metavar="W", help="share of the loss that is distillation")
    p.add_argument("--distill-temperature", type=float, metavar="T", help="softening of both distributions")
    p.add_argument("--force", action="store_true",
                   help="decide a structure even when the training loss never fell (the gates are then noise)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    _add_picture_options(p)
    p.set_defaults(run=_shrink)

    p = sub.add_parser("expand", help="scale every prunable width by one multiplier, to a budget; write the model")
    _add_model_options(p)
    p.add_argument("--structure", metavar="S.json", help="structure of MODEL to expand (default: MODEL as it is)")
    size = p.add_mutually_exclusive_group(required=True)
    _add_budget_options(size)
    size.add_argument("--multiplier", type=float, metavar="M",
                      help="one width multiplier for every prunable group (the uniform baseline: on the original)")
    p.add_argument("--reference", metavar="ORIGINAL.onnx", help="what a relative budget (1.0x) is of (default: MODEL)")
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="keep every width a multiple of N")
    p.add_argument("--init", choices=["fresh", "keep"], default="fresh",
                   help="fresh: every weight re-initialised, for retraining from scratch (default); keep: only the "
                        "new channels, read with zero weights (the wider model computes what MODEL computes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh weights")
    _add_roofline_options(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    _add_picture_options(p)
    p.set_defaults(run=_expand)

    p = sub.add_parser("cycle", help="MorphNet's recipe: rounds of shrink, expand to the budget, retrain, evaluate")
    _add_model_options(p)
    _add_training_options(p)
    size = p.add_mutually_exclusive_group(required=True)
    _add_budget_options(size)
    p.add_argument("--rounds", type=int, default=2, help="shrink/expand rounds after the original (default 2)")
    p.add_argument("--shrink-to", type=float, default=0.5, metavar="F",
                   help="each round shrinks to this share of the budget before expanding back (default 0.5)")
    p.add_argument("--out-dir", required=True, metavar="DIR",
                   help="every round's models and structure, checkpoints and the table (cycle.json)")
    p.add_argument("--regularizer", choices=["auto", "gamma", "group-lasso", "figs"], default="auto")
    p.add_argument("--grouping", choices=["max", "l2"], default="max", help="as for shrink")
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="keep every width a multiple of N")
    _add_roofline_options(p)
    p.add_argument("--force", action="store_true", help="let shrink decide even when its training loss never fell")
    p.add_argument("--json", action="store_true", help="print the table as one JSON document")
    _add_picture_options(p)
    p.set_defaults(run=_cycle)

    p = sub.add_parser("train", help="plain training (no regularizer): the baseline for MorphNet results")
    _add_model_options(p)
    _add_training_options(p)
    p.add_argument("--init", choices=["keep", "fresh"], default="keep",
                   help="keep: train from the model's weights (default); fresh: re-initialise every weight first "
                        "(retrain from scratch)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_train)

    p = sub.add_parser("evaluate", help="top-1/top-5 accuracy (or mse) with onnxruntime")
    p.add_argument("model")
    p.add_argument("--data", required=True, metavar="VAL.npz")
    p.add_argument("--loss", choices=["ce", "mse"], default="ce")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_evaluate)
    return parser


def _add_budget_options(group) -> None:
    group.add_argument("--budget-flops", metavar="0.5x|2.1G", help="target FLOPs, relative (0.5x) or absolute")
    group.add_argument("--budget-size", metavar="0.5x|1.2M", help="target weight count, relative or absolute")
    group.add_argument("--budget-latency", metavar="0.5x|1.2ms", help="target roofline latency (see --hardware)")


def _add_roofline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hardware", metavar="NAME|PEAK/BW", help="roofline for --budget-latency (default V100)")
    p.add_argument("--cost-batch-size", type=int, default=1, metavar="B", help="batch of the latency roofline")


def _budget(args: argparse.Namespace):
    from .budget import RESOURCES, Budget

    for resource in RESOURCES:
        text = getattr(args, f"budget_{resource}")
        if text is not None:
            return Budget(resource, text)
    return None


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="TRAIN.npz", help="one array per model input (or x) plus labels")
    p.add_argument("--data-module", metavar="pkg.mod:fn", help="a function returning an iterable of batches")
    p.add_argument("--val", metavar="VAL.npz", help="validation data (accuracy printed at the end)")
    p.add_argument("--loss", choices=["ce", "mse"], default="ce")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--schedule", choices=["onecycle", "cosine", "constant"], default="onecycle")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="training threads, onnxruntime's or torch's (0: their default)")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="save a checkpoint here every --checkpoint-every steps")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--backend", choices=["ort", "torch"], default="ort",
                   help="training engine: onnxruntime-training (default) or torch (extra `torch`; data-parallel "
                        "under torchrun)")


def _train_options(args: argparse.Namespace):
    from pathlib import Path

    from .training.trainer import TrainOptions

    return TrainOptions(epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        optimizer=args.optimizer, schedule=args.schedule, weight_decay=args.weight_decay,
                        seed=args.seed, threads=args.threads, loss=args.loss,
                        checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
                        checkpoint_every=args.checkpoint_every, resume=args.resume,
                        progress=not args.no_progress and sys.stderr.isatty(), backend=args.backend)


def _print_learned(result, args) -> None:
    from .report import human

    if not is_main():  # under torchrun rank 0 reports, warnings included
        return
    for warning in result.warnings:  # stderr: a --json document on stdout stays clean
        print(f"[W] {warning}", file=sys.stderr)
    if args.json:
        json.dump(result.to_dict(), sys.stdout)
        sys.stdout.write("\n")
        return
    print(f"wrote {args.output}: FLOPs {human(result.flops_before)} -> {human(result.flops_after)} "
          f"({result.flops_after / result.flops_before:.1%}), params {human(result.params_before)} -> "
          f"{human(result.params_after)}; {result.steps} steps in {result.seconds:.0f} s")
    if result.resource != "flops":
        print(f"{result.resource}: {result.cost_before:.4g} -> {result.cost_after:.4g} "
              f"({result.cost_after / result.cost_before:.1%})")
    if result.decision:
        d = result.decision
        budget = f", budget {d['target'] / d['full_cost']:.3f}x" if d["target"] else ""
        print(f"{result.resource}: learned structure {d['learned_cost'] / d['full_cost']:.3f}x, written "
              f"{d['written_cost'] / d['full_cost']:.3f}x{budget} ({d['forced_cuts']} live channels cut, "
              f"{d['readmitted']} re-admitted)")
    if result.validation is not None:
        v = result.validation
        print(f"validation ({v.examples} examples): " + (f"top-1 {v.accuracy:.2%}, top-5 {v.top5:.2%}"
                                                          if v.accuracy is not None else f"mse {v.mse:.4g}"))
    if getattr(result, "cut_validation", None) is not None and result.cut_validation.accuracy is not None:
        print(f"before the fine-tune ({result.decision.get('finetune_steps')} steps): top-1 "
              f"{result.cut_validation.accuracy:.2%}")
    for note in result.notes:
        print(f"[W] {note}")


def _shrink(args: argparse.Namespace) -> int:
    from .learning import ShrinkOptions, shrink
    from .pictures import check_picture_paths

    check_picture_paths(args.plot, args.html)
    if args.old_structure:  # --structure is an input everywhere else (prune, expand)
        print("[W] shrink --structure is deprecated: it names an output here; use --save-structure", file=sys.stderr)
        args.save_structure = args.save_structure or args.old_structure
    recipe = {name: getattr(args, name) for name in ("cut", "hold", "hold_from", "hold_until", "proximal", "reach", "finetune_share", "finetune_lr",
                                                      "finetune_schedule", "distill", "distill_weight",
                                                      "distill_temperature") if getattr(args, name) is not None}
    method = ShrinkOptions(budget=_budget(args), strength=args.strength, regularizer=args.regularizer,
                           threshold=args.threshold, grouping=args.grouping, hardware=args.hardware,
                           cost_batch_size=args.cost_batch_size, round_to=args.round_to, keep=args.keep,
                           finetune_steps=args.finetune_steps, force=args.force, **recipe)
    result = shrink(args.model, args.data, args.output, val=args.val, method=method, options=_train_options(args),
                    data_module=args.data_module, input_shapes=parse_input_shapes(args.input_shape),
                    structure_path=args.save_structure)
    _print_learned(result, args)
    _end_with_diff(args.model, args.output, args)
    return 0


def _train(args: argparse.Namespace) -> int:
    from .learning import train

    result = train(args.model, args.data, args.output, val=args.val, options=_train_options(args),
                   data_module=args.data_module, input_shapes=parse_input_shapes(args.input_shape), init=args.init)
    _print_learned(result, args)
    return 0


def _expand(args: argparse.Namespace) -> int:
    from .expansion import expand
    from .pictures import check_picture_paths
    from .report import human

    check_picture_paths(args.plot, args.html)
    result = expand(args.model, args.output, structure=args.structure, budget=_budget(args),
                    multiplier=args.multiplier, reference=args.reference, round_to=args.round_to, init=args.init,
                    seed=args.seed, input_shapes=parse_input_shapes(args.input_shape), keep=args.keep,
                    hardware=args.hardware, cost_batch_size=args.cost_batch_size)
    if args.json:
        json.dump(result.to_dict(), sys.stdout)
        sys.stdout.write("\n")
        _end_with_diff(args.model, args.output, args)
        return 0
    print(f"wrote {args.output}: width multiplier {result.multiplier:.4g} on {len(result.widths)} groups "
          f"({args.init} weights); FLOPs {human(result.flops_before)} -> {human(result.flops_after)}, "
          f"params {human(result.params_before)} -> {human(result.params_after)}")
    if result.target is not None:
        unit = {"flops": "FLOPs", "size": "weights", "latency": "s"}[result.resource]
        print(f"{result.resource}: {result.cost_after:.6g} {unit} = {result.cost_after / result.target:.2%} of the "
              f"budget {result.target:.6g} ({result.target / result.reference_cost:.3g}x of the reference); "
              f"one rounding step more: {result.next_step_cost / result.target:.2%}")
    widths = ", ".join(f"{row['sources'][0]} {row['before']}->{row['after']}" for row in result.widths[:6])
    more = f" and {len(result.widths) - 6} more" if len(result.widths) > 6 else ""
    print(f"widths: {widths}{more}")
    for note in result.notes:
        print(f"[W] {note}")
    _end_with_diff(args.model, args.output, args)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .learning import evaluate

    result = evaluate(args.model, args.data, loss=args.loss, input_shapes=parse_input_shapes(args.input_shape),
                      batch=args.batch_size)
    if args.json:
        json.dump(result.to_dict(), sys.stdout)
        sys.stdout.write("\n")
    elif result.accuracy is not None:
        print(f"{args.model}: top-1 {result.accuracy:.2%}, top-5 {result.top5:.2%} on {result.examples} examples")
    else:
        print(f"{args.model}: mse {result.mse:.6g} on {result.examples} examples")
    return 0


def _cycle(args: argparse.Namespace) -> int:
    from .cycling import cycle
    from .pictures import check_picture_paths
    from .report import print_cycle

    check_picture_paths(args.plot, args.html)
    if args.checkpoint_dir:
        raise MorphNetError("cycle keeps its checkpoints in --out-dir/checkpoints: drop --checkpoint-dir")
    resume, args.resume = args.resume, False
    result = cycle(args.model, args.data, args.val, budget=_budget(args), out_dir=args.out_dir, rounds=args.rounds,
                   shrink_to=args.shrink_to, options=_train_options(args), data_module=args.data_module,
                   regularizer=args.regularizer, grouping=args.grouping, round_to=args.round_to, keep=args.keep,
                   input_shapes=parse_input_shapes(args.input_shape), hardware=args.hardware,
                   cost_batch_size=args.cost_batch_size, resume=resume, force=args.force)
    if args.json:
        json.dump(result.to_dict(), sys.stdout)
        sys.stdout.write("\n")
    else:
        print_cycle(result)
    # What the rounds did to the network: the original against the last round's model.
    _end_with_diff(args.model, result.rows[-1].model, args)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .inspection import inspect
    from .report import print_inspection

    if args.after is not None:  # `inspect BEFORE AFTER` is `diff BEFORE AFTER`
        if args.keep:
            raise MorphNetError("--keep does not apply to a diff of two models")
        return _diff(argparse.Namespace(**{**vars(args), "before": args.model, "structure_model": None}))
    if args.plot or args.html:
        raise MorphNetError("--plot and --html show a diff: give two models (inspect BEFORE AFTER)")
    report = inspect(args.model, input_shapes=parse_input_shapes(args.input_shape), keep=args.keep,
                     hardware=args.hardware, cost_batch_size=args.cost_batch_size)
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
    from .pictures import check_picture_paths
    from .pruning import prune
    from .report import human

    check_picture_paths(args.plot, args.html)
    refuse_overwriting({"-o": args.output, "--save-structure": args.save_structure}, [args.model, args.structure])
    result = prune(args.model, args.structure, args.output, input_shapes=parse_input_shapes(args.input_shape),
                   keep=args.keep, round_to=args.round_to, approximate_borders=args.approximate_borders)
    if args.save_structure:
        result.structure.save(args.save_structure, result.analysis, str(args.model))
    print(f"wrote {args.output}: FLOPs {human(result.flops_before)} -> {human(result.flops_after)} "
          f"({result.flops_after / result.flops_before:.1%}), params {human(result.params_before)} -> "
          f"{human(result.params_after)}, {len(result.removed_ops)} ops removed")
    for note in result.notes:
        print(f"[W] {note}")
    _end_with_diff(args.model, args.output, args)
    return 0


def _end_with_diff(before, after, args: argparse.Namespace) -> None:
    """The short diff after a command that wrote a model (stdout unless --json), then --plot/--html."""
    if not is_main():  # under torchrun rank 0 wrote the model, and reports on it
        return
    from .diffing import diff, short_summary
    from .pictures import write_pictures

    result = diff(before, after, input_shapes=parse_input_shapes(args.input_shape))
    out = sys.stderr if getattr(args, "json", False) else sys.stdout
    if out is sys.stdout:
        print("\n".join(short_summary(result)))
    for path in write_pictures(result, args.plot, args.html):
        print(f"wrote {path}", file=out)


def _diff(args: argparse.Namespace) -> int:
    from .diffing import diff
    from .pictures import check_picture_paths, write_pictures
    from .report import print_diff

    check_picture_paths(args.plot, args.html)
    result = diff(args.before, args.after, model=args.structure_model, input_shapes=parse_input_shapes(args.input_shape),
                  hardware=args.hardware, cost_batch_size=getattr(args, "cost_batch_size", 1))
    if args.json:
        json.dump(result.to_dict(), sys.stdout)
        sys.stdout.write("\n")
    else:
        print_diff(result)
    for path in write_pictures(result, args.plot, args.html):
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _check(args: argparse.Namespace) -> int:
    from .checking import check
    from .report import human

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


def _terminate(signum, frame) -> None:
    """SIGTERM (`kill PID`, a job scheduler's stop) ends a run as Ctrl-C does: temporary files are
    removed, and training says where its checkpoint is."""
    raise KeyboardInterrupt


def _stdout_closed() -> int:
    """The reader of stdout went away (`inspect MODEL | head -3`): end quietly, as a command killed by
    SIGPIPE does (exit 141, what `set -o pipefail` reports for `cat` there). stdout is pointed at
    devnull so that the flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # called from a thread other than the main one: signals stay as they are
        previous = None
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
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
