"""What each command does with its parsed arguments: call one function of the Python API, print what
it returns (tables, or one JSON document with --json), end with the short diff of what it wrote.

The API and what it imports load per command, so that `inspect` never loads training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cost.budget import RESOURCES, Budget
from ..errors import MorphNetError
from ..loading.shapes import parse_input_shapes
from ..loading.writing import refuse_overwriting
from ..training.distributed import is_main


def _budget(args: argparse.Namespace):
    for resource in RESOURCES:
        text = getattr(args, f"budget_{resource}")
        if text is not None:
            return Budget(resource, text)
    return None


def _measured(args: argparse.Namespace):
    """The model's measured latency table when the command asks for one (--hardware measure or
    --latency-table), else None."""
    from ..cost.resources import measures_latency
    from ..surgery.latency import resolve_hardware

    if not measures_latency(args.hardware, args.latency_table):
        return None
    table = resolve_hardware(args.hardware, args.cost_batch_size, args.model, args.provider, args.latency_threads,
                             args.latency_table, parse_input_shapes(args.input_shape), progress=sys.stderr.isatty())
    how = {"measured": f"measured in {table.seconds:.0f} s", "cache": "from the cache", "file": "from the file"}
    print(f"[I] latency table {how.get(table.origin, table.origin)}: {table.path}", file=sys.stderr)
    return table


def _print_json(result) -> None:
    json.dump(result.to_dict(), sys.stdout)
    sys.stdout.write("\n")


def _images(args: argparse.Namespace, augment: bool = False):
    from ..training.images import ImageOptions

    return ImageOptions(mean=args.mean, std=args.std, augment=augment, workers=args.data_workers)


def _train_options(args: argparse.Namespace):
    from ..training.trainer import TrainOptions

    return TrainOptions(epochs=args.epochs, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        optimizer=args.optimizer, schedule=args.schedule, weight_decay=args.weight_decay,
                        seed=args.seed, threads=args.threads, loss=args.loss,
                        checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
                        checkpoint_every=args.checkpoint_every, resume=args.resume,
                        progress=not args.no_progress and sys.stderr.isatty(), backend=args.backend,
                        images=_images(args, augment=not args.no_augment))


def _print_learned(result, args) -> None:
    from ..report.tables import human

    if not is_main():  # under torchrun rank 0 reports, warnings included
        return
    for warning in result.warnings:  # stderr: a --json document on stdout stays clean
        print(f"[W] {warning}", file=sys.stderr)
    if args.json:
        _print_json(result)
        return
    print(f"wrote {args.output}: FLOPs {human(result.flops_before)} -> {human(result.flops_after)} "
          f"({result.flops_after / result.flops_before:.1%}), params {human(result.params_before)} -> "
          f"{human(result.params_after)}; {result.steps} steps in {result.seconds:.0f} s")
    # a measured latency budget is judged on the measurement (below); these lines are the table's
    label = f"{result.resource} (table)" if getattr(result, "latency", None) else result.resource
    if result.resource != "flops":
        print(f"{label}: {result.cost_before:.4g} -> {result.cost_after:.4g} "
              f"({result.cost_after / result.cost_before:.1%})")
    if result.decision:
        d = result.decision
        budget = f", budget {d['target'] / d['full_cost']:.3f}x" if d["target"] else ""
        print(f"{label}: learned structure {d['learned_cost'] / d['full_cost']:.3f}x, written "
              f"{d['written_cost'] / d['full_cost']:.3f}x{budget} ({d['forced_cuts']} live channels cut, "
              f"{d['readmitted']} re-admitted)")
    if result.validation is not None:
        v = result.validation
        print(f"validation ({v.examples} examples): " + (f"top-1 {v.accuracy:.2%}, top-5 {v.top5:.2%}"
                                                          if v.accuracy is not None else f"mse {v.mse:.4g}"))
    if getattr(result, "cut_validation", None) is not None and result.cut_validation.accuracy is not None:
        print(f"before the fine-tune ({result.decision.get('finetune_steps')} steps): top-1 "
              f"{result.cut_validation.accuracy:.2%}")
    if (result.decision or {}).get("teacher"):
        print(teacher_line(result.decision["teacher"]))
    if getattr(result, "latency", None):
        m = result.latency
        budget = f", budget {m['goal']:.3f}x" if m.get("goal") is not None and m["relative"] else \
            (f", budget {m['goal'] * 1e3:.4g} ms" if m.get("goal") is not None else "")
        tries = len(m["landing"])
        for c in (result.decision or {}).get("hold_calibrations", []):
            print(f"latency measured while training (step {c['step']}): the hold's table target "
                  f"{c['table_from']:.3f}x -> {c['table_to']:.3f}x")
        print(f"latency measured ({m['settings']}): {m['original_s'] * 1e3:.4g} ms -> {m['written_s'] * 1e3:.4g} ms "
              f"({m['ratio']:.3f}x ± {m['noise']:.1%}{budget}); the table predicted {m['predicted_ratio']:.3f}x"
              + (f"; landed in {tries} tr{'y' if tries == 1 else 'ies'}" if tries else ""))
    if result.classes is not None:
        print(_classes_line(result.classes, args.output))
    for note in result.notes:
        print(f"[W] {note}")


def teacher_line(teacher: dict, taught: str = "") -> str:
    """Whether the input model taught (distillation.py's check), what it taught when that is not the
    whole run, and why."""
    scope = f" ({taught})" if teacher["used"] and taught else ""
    return f"distillation {'on' if teacher['used'] else 'off'}{scope}: {teacher['reason']}"


def _classes_line(classes: list[str], output) -> str:
    """The class order of an image folder, as the written model's outputs read it."""
    from ..training.images import classes_path

    shown = ", ".join(f"{k} {name}" for k, name in enumerate(classes[:10]))
    more = f", ... ({len(classes)} in all)" if len(classes) > 10 else ""
    return f"classes (output index, folder): {shown}{more}; written to {classes_path(output)}"


# shrink's recipe options (parser.py's _recipe_options), each a ShrinkOptions field of the same name.
RECIPE_OPTIONS = ("cut", "hold", "hold_from", "hold_until", "proximal", "reach", "finetune_share", "finetune_lr",
                  "finetune_schedule", "distill", "distill_weight", "distill_temperature")


def _shrink(args: argparse.Namespace) -> int:
    from ..recipes.shrink import ShrinkOptions, shrink
    from ..report.pictures import check_picture_paths

    check_picture_paths(args.plot, args.html)
    if args.old_structure:  # --structure is an input everywhere else (prune, expand)
        print("[W] shrink --structure is deprecated: it names an output here; use --save-structure", file=sys.stderr)
        args.save_structure = args.save_structure or args.old_structure
    budget = _budget(args)
    if budget is not None and "," in budget.text:  # several budgets: a family from one run
        return _shrink_family(args, budget)
    recipe = {name: getattr(args, name) for name in RECIPE_OPTIONS}
    method = ShrinkOptions(budget=budget, strength=args.strength, regularizer=args.regularizer,
                           threshold=args.threshold, grouping=args.grouping, hardware=args.hardware,
                           cost_batch_size=args.cost_batch_size, round_to=args.round_to, keep=args.keep,
                           finetune_steps=args.finetune_steps, force=args.force, provider=args.provider,
                           latency_threads=args.latency_threads, latency_table=args.latency_table, **recipe)
    result = shrink(args.model, args.data, args.output, val=args.val, method=method, options=_train_options(args),
                    data_module=args.data_module, input_shapes=parse_input_shapes(args.input_shape),
                    structure_path=args.save_structure)
    _print_learned(result, args)
    _end_with_diff(args.model, args.output, args)
    return 0


def _shrink_family(args: argparse.Namespace, budget) -> int:
    from ..recipes.family import parse_budgets, shrink_family
    from ..recipes.shrink import ShrinkOptions
    from ..report.family import print_family, write_family_plot
    from ..report.pictures import check_picture_paths

    if args.html:
        raise MorphNetError("--html shows one model's diff; a family (several budgets) takes --plot only")
    check_picture_paths(args.plot)
    budgets = parse_budgets(budget.resource, budget.text)
    recipe = {name: getattr(args, name) for name in RECIPE_OPTIONS}  # the API refuses those a family sets itself
    method = ShrinkOptions(budget=budgets[0], regularizer=args.regularizer, threshold=args.threshold,
                           grouping=args.grouping, hardware=args.hardware, cost_batch_size=args.cost_batch_size,
                           round_to=args.round_to, keep=args.keep, finetune_steps=args.finetune_steps,
                           force=args.force, provider=args.provider, latency_threads=args.latency_threads,
                           latency_table=args.latency_table, **recipe)
    result = shrink_family(args.model, args.data, args.output, val=args.val, budgets=budgets, method=method,
                           options=_train_options(args), data_module=args.data_module,
                           input_shapes=parse_input_shapes(args.input_shape), structure_path=args.save_structure)
    if not is_main():
        return 0
    for warning in result.warnings:
        print(f"[W] {warning}", file=sys.stderr)
    if args.json:
        _print_json(result)
    else:
        print_family(result)
        if result.teacher:
            print(teacher_line(result.teacher, "each member's fine-tune; the run learns from the labels"))
    if args.plot:
        path = write_family_plot(result, args.plot)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..recipes.shrink import train

    result = train(args.model, args.data, args.output, val=args.val, options=_train_options(args),
                   data_module=args.data_module, input_shapes=parse_input_shapes(args.input_shape), init=args.init)
    _print_learned(result, args)
    return 0


def _expand(args: argparse.Namespace) -> int:
    from ..expansion.expand import expand
    from ..report.pictures import check_picture_paths
    from ..report.tables import human

    check_picture_paths(args.plot, args.html)
    result = expand(args.model, args.output, structure=args.structure, budget=_budget(args),
                    multiplier=args.multiplier, reference=args.reference, round_to=args.round_to, init=args.init,
                    seed=args.seed, input_shapes=parse_input_shapes(args.input_shape), keep=args.keep,
                    hardware=args.hardware, cost_batch_size=args.cost_batch_size, provider=args.provider,
                    latency_threads=args.latency_threads, latency_table=args.latency_table)
    if args.json:
        _print_json(result)
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
    from ..recipes.shrink import evaluate

    result = evaluate(args.model, args.data, loss=args.loss, input_shapes=parse_input_shapes(args.input_shape),
                      batch=args.batch_size, images=_images(args))
    if args.json:
        _print_json(result)
    elif result.accuracy is not None:
        print(f"{args.model}: top-1 {result.accuracy:.2%}, top-5 {result.top5:.2%} on {result.examples} examples")
    else:
        print(f"{args.model}: mse {result.mse:.6g} on {result.examples} examples")
    return 0


def _cycle(args: argparse.Namespace) -> int:
    from ..recipes.cycle import cycle
    from ..report.pictures import check_picture_paths
    from ..report.tables import print_cycle

    check_picture_paths(args.plot, args.html)
    if args.checkpoint_dir:
        raise MorphNetError("cycle keeps its checkpoints in --out-dir/checkpoints: drop --checkpoint-dir")
    resume, args.resume = args.resume, False
    result = cycle(args.model, args.data, args.val, budget=_budget(args), out_dir=args.out_dir, rounds=args.rounds,
                   shrink_to=args.shrink_to, options=_train_options(args), data_module=args.data_module,
                   regularizer=args.regularizer, grouping=args.grouping, round_to=args.round_to, keep=args.keep,
                   input_shapes=parse_input_shapes(args.input_shape), hardware=args.hardware,
                   cost_batch_size=args.cost_batch_size, resume=resume, force=args.force, provider=args.provider,
                   latency_threads=args.latency_threads, latency_table=args.latency_table)
    if args.json:
        _print_json(result)
    else:
        print_cycle(result)
    # What the rounds did to the network: the original against the last round's model.
    _end_with_diff(args.model, result.rows[-1].model, args)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from ..cost.inspection import inspect
    from ..report.tables import print_inspection

    if args.after is not None:  # `inspect BEFORE AFTER` is `diff BEFORE AFTER`
        if args.keep:
            raise MorphNetError("--keep does not apply to a diff of two models")
        return _diff(argparse.Namespace(**{**vars(args), "before": args.model, "structure_model": None}))
    if args.plot or args.html:
        raise MorphNetError("--plot and --html show a diff: give two models (inspect BEFORE AFTER)")
    report = inspect(args.model, input_shapes=parse_input_shapes(args.input_shape), keep=args.keep,
                     hardware=_measured(args) or args.hardware, cost_batch_size=args.cost_batch_size)
    if not report.analysis.prunable_groups:
        reasons = sorted({r for g in report.analysis.groups for r in g.reasons})[:3]
        detail = f" ({'; '.join(reasons)})" if reasons else " (no Conv, Gemm or MatMul with weight initializers)"
        raise MorphNetError(f"{args.model}: nothing to prune{detail}")
    if args.json:
        _print_json(report)
    else:
        print_inspection(report)
    return 0


def _prune(args: argparse.Namespace) -> int:
    from ..report.pictures import check_picture_paths
    from ..report.tables import human
    from ..surgery.pruning import prune

    check_picture_paths(args.plot, args.html)
    refuse_overwriting({"-o": args.output, "--save-structure": args.save_structure}, [args.model, args.structure])
    result = prune(args.model, args.structure, args.output, input_shapes=parse_input_shapes(args.input_shape),
                   keep=args.keep, round_to=args.round_to, approximate_borders=args.approximate_borders,
                   approximate_norms=args.approximate_norms)
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
    from ..cost.resources import measures_latency
    from ..report.diff import diff, short_summary
    from ..report.pictures import write_pictures

    # The roofline the command costed with; after a measured one the line leaves latency to the measurement.
    hardware = getattr(args, "hardware", None)  # prune costs nothing, so it names no hardware
    measured = measures_latency(hardware, getattr(args, "latency_table", None))
    result = diff(before, after, input_shapes=parse_input_shapes(args.input_shape),
                  hardware=None if measured else hardware, cost_batch_size=getattr(args, "cost_batch_size", 1))
    out = sys.stderr if getattr(args, "json", False) else sys.stdout
    if out is sys.stdout:
        print("\n".join(short_summary(result, latency=not measured)))
    for path in write_pictures(result, args.plot, args.html):
        print(f"wrote {path}", file=out)


def _diff(args: argparse.Namespace) -> int:
    from ..report.diff import diff
    from ..report.pictures import check_picture_paths, write_pictures
    from ..report.tables import print_diff

    check_picture_paths(args.plot, args.html)
    result = diff(args.before, args.after, model=args.structure_model, input_shapes=parse_input_shapes(args.input_shape),
                  hardware=args.hardware, cost_batch_size=getattr(args, "cost_batch_size", 1))
    if args.json:
        _print_json(result)
    else:
        print_diff(result)
    for path in write_pictures(result, args.plot, args.html):
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..report.tables import human
    from ..surgery.checking import check

    result = check(args.model, fraction=args.fraction, seed=args.seed,
                   input_shapes=parse_input_shapes(args.input_shape), keep=args.keep)
    if args.json:
        _print_json(result)
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


COMMANDS = {"inspect": _inspect, "diff": _diff, "prune": _prune, "check": _check, "shrink": _shrink, "expand": _expand,
            "cycle": _cycle, "train": _train, "evaluate": _evaluate}
