"""`shrink` with several budgets (`--budget-latency 0.75x,0.5x,0.25x`, or FLOPs, or size): a family of
models from one regularized run.

The run is `shrink`'s (the same regularizer, data, schedule and steps), but its budget controller
steps down through the budgets, largest first (method/family.py: the phases), holding the channels
each budget removes at zero. The trained weights at the end of each phase decide one member, which
is cut, fine-tuned on its own (the run and the members' fine-tunes together take FAMILY_COST, 1.5x,
the steps of one shrink), measured and written next to `-o`: `small.onnx` becomes
`small_0.75x.onnx`, `small_0.5x.onnx`, `small_0.25x.onnx` (the budget as given). The result holds
one row per member (cost, accuracy before and after its fine-tune, measured latency with
`--hardware measure`) and the steps it took.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..analysis.walk import analyze
from ..cost.budget import Budget
from ..cost.latency import LatencyTable
from ..cost.resources import compute_costs, resource_cost
from ..cost.widths import fast_widths
from ..errors import MorphNetError
from ..graph_utils import with_params
from ..loading.model import LoadedModel, load
from ..loading.writing import refuse_overwriting
from ..method.decision import decide
from ..method.family import PhasedController, phase_ends, phase_windows
from ..method.figs import FIGS_THRESHOLD, figs_regularizers
from ..method.landing import measured_report
from ..method.progressive import HoldHooks
from ..method.regularizers import group_regularizers
from ..surgery.pruning import cut_for_training, prepare, verify_model
from ..training.batchnorm import recalibrate_batchnorm
from ..training.data import open_data
from ..training.distillation import with_teacher
from ..training.distributed import is_main
from ..training.evaluation import evaluate_model
from ..training.graph import check_trainable
from ..training.health import LIKELY_CAUSES
from ..training.trainer import Trainer, TrainOptions
from .measured import hold_calibrator, land_on_rank_zero, recipe_hardware
from .options import SHRINK_FINETUNE_LR
from .shrink import (ShrinkOptions, _finetune, _forced_warning, _progress, _target_shape, _teacher, _write,
                     check_shrinkable)

# A family costs FAMILY_COST times one shrink's steps N: its regularized run takes FAMILY_RUN_SHARE N,
# the members' fine-tunes the rest, in equal parts. (Bundled task, latency 0.75x,0.5x,0.25x, 5 seeds,
# each member against its separate run at equal measured latency: a run of N and fine-tunes of N/6
# -1.55/-1.62/-8.16 points, of 0.6 N and 0.3 N -1.28/-1.65/-4.58, of 0.8 N and 0.23 N -1.06/-1.63/-2.00.
# Unequal splits of the fine-tunes lost: towards the smallest member from a trained input, towards the
# member decided first from scratch, whose gain cost the smallest more; docs/benchmarks.md.)
FAMILY_COST = 1.5
FAMILY_RUN_SHARE = 0.8
# A member's fine-tune is a cosine from this share of --lr unless --finetune-lr says otherwise, the
# second where a trained input teaches it. (Bundled task, latency 0.75x,0.5x,0.25x, 5 seeds, members
# against their separate runs: from scratch at 1.0 -1.26/-0.98/-0.13 points, at 2.0 -1.50/-0.84/+2.17,
# at 3.0 -2.10/-1.15/+1.12; from a trained input at 1.0 +0.08/-0.18/-1.98, at 2.0 +0.08/+0.00/-0.81,
# at 3.0 +0.35/+0.04/-0.15, at 0.3 -0.42/-0.42/-6.91; docs/benchmarks.md.)
FAMILY_FINETUNE_LR = 2.0
FAMILY_TAUGHT_FINETUNE_LR = 3.0
# ...but only a fine-tune long enough to anneal from it starts that high: one of FINETUNE_LR_RAMP[0]
# steps or fewer starts from one shrink's rate, one of FINETUNE_LR_RAMP[1] or more from the rate
# above, linear in between. (3 x - 1 x from a trained input, FLOPs 0.75x,0.5x,0.25x, 3 seeds: bundled
# task, fine-tunes of 35 steps -1.28/-1.69/+0.13 points, of 70 -0.68/+0.03/+0.11, of 175 (5 seeds)
# +0.78/+0.36/+0.39; torch's digit ResNet, 46 steps -0.51/-0.67/-0.34, 152 steps -0.08/-0.08/+0.08.)
FINETUNE_LR_RAMP = (70, 150)


@dataclass
class FamilyResult:
    resource: str
    members: list[dict]  # one per budget, largest first
    steps: int  # regularized steps (one run)
    finetune_steps: int  # per member
    seconds: float
    warnings: list[str] = field(default_factory=list)
    teacher: dict | None = None  # what was measured of the input model as a teacher (distillation.py)
    finetune_lr: float = FAMILY_FINETUNE_LR  # each fine-tune's starting rate, as a share of --lr

    @property
    def total_steps(self) -> int:
        return self.steps + self.finetune_steps * len(self.members)

    def to_dict(self) -> dict:
        return {"resource": self.resource, "members": self.members, "steps": self.steps,
                "finetune_steps": self.finetune_steps, "finetune_lr": self.finetune_lr, "total_steps": self.total_steps,
                "seconds": self.seconds,
                "warnings": self.warnings, "teacher": self.teacher}


def member_path(output, text: str) -> Path:
    """`small.onnx` and `0.5x` -> `small_0.5x.onnx`."""
    path = Path(output)
    return path.with_name(f"{path.stem}_{text.strip()}{path.suffix}")


def parse_budgets(resource: str, text: str) -> list[Budget]:
    """`0.75x,0.5x,0.25x` -> Budgets, checked: at least two, all relative or all absolute, distinct."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) < 2 or any(not part for part in parts):
        raise MorphNetError(f"--budget-{resource} {text}: a family takes two or more budgets, e.g. 0.75x,0.5x,0.25x")
    budgets = [Budget(resource, part) for part in parts]
    if len({b.relative for b in budgets}) > 1:
        raise MorphNetError(f"--budget-{resource} {text}: give every budget relative (0.5x) or every one absolute")
    if len(set(parts)) < len(parts):
        raise MorphNetError(f"--budget-{resource} {text}: a budget is given twice")
    return budgets


def shrink_family(model, data=None, output=None, val=None, budgets: list[Budget] | None = None,
                  method: ShrinkOptions | None = None, options: TrainOptions | None = None,
                  data_module: str | None = None, input_shapes=None, structure_path=None) -> FamilyResult:
    """One regularized run through `budgets` (largest first), one model per budget written next to
    `output` (see the module docstring); `method` holds the other method options (its `budget` is
    ignored; a family sets when each member is cut, how long it is fine-tuned and how fast lambda
    grows itself: `cut`, `finetune_share` and `reach` other than their defaults are refused, each
    fine-tune is a cosine from `finetune_lr`, when None from FAMILY_FINETUNE_LR, or
    FAMILY_TAUGHT_FINETUNE_LR where a trained input teaches, less for a short fine-tune:
    `member_finetune_lr`); `structure_path` names
    the structure files the same way when given.

    >>> shrink_family("resnet.onnx", "train.npz", "small.onnx", val="val.npz",
    ...               budgets=parse_budgets("latency", "0.75x,0.5x,0.25x"),
    ...               method=ShrinkOptions(budget=Budget("latency", "0.5x"), hardware="measure"))  # doctest: +SKIP
    """
    if not budgets or len(budgets) < 2 or len({b.resource for b in budgets}) > 1:
        raise MorphNetError("a family takes two or more budgets of one resource")
    method = replace(method or ShrinkOptions(budget=budgets[0]), budget=budgets[0], strength=None)
    check_family_recipe(method)
    options = options or TrainOptions()
    outputs = [member_path(output, b.text) if output is not None else None for b in budgets]
    structures = [member_path(structure_path, b.text) if structure_path is not None else None for b in budgets]
    refuse_overwriting({f"-o ({b.text})": o for b, o in zip(budgets, outputs)}
                       | {f"--save-structure ({b.text})": s for b, s in zip(budgets, structures)}, [model, data, val])
    loaded, analysis = prepare(model, input_shapes, list(method.keep) if method.keep else None, seed=options.seed)
    check_trainable(loaded)
    hw = recipe_hardware(method, loaded, progress=options.progress and is_main())
    round_to = fast_widths(hw, analysis) if method.round_to == "auto" else method.round_to
    resource = budgets[0].resource
    full_costs = compute_costs(analysis, loaded, hw)
    full = resource_cost(full_costs, resource)
    order = sorted(range(len(budgets)), key=lambda i: -budgets[i].target(full))
    budgets, outputs, structures = ([seq[i] for i in order] for seq in (budgets, outputs, structures))
    targets = [b.target(full) for b in budgets]
    for budget, target in zip(budgets, targets):
        check_shrinkable(loaded, analysis, hw, resource, full, target, budget.text)
    threshold, gates = method.threshold, None
    if method.regularizer == "figs":
        (regs, gates), threshold = figs_regularizers(analysis, loaded), FIGS_THRESHOLD
    else:
        regs = group_regularizers(analysis, loaded, method.regularizer, method.grouping)
    if not regs:
        raise MorphNetError(f"{loaded.name}: no prunable group has a gate for the {method.regularizer} regularizer")
    dataset, val_set = open_data(data, val, data_module, loaded, options.loss, options.images)
    one_shrink = options.steps or options.epochs * dataset.batches_per_epoch(options.batch_size)
    total = max(len(budgets), round(FAMILY_RUN_SHARE * one_shrink))
    ends = phase_ends(total, len(budgets))
    hold = method.hold
    pace = method.controller_pace()
    # A trained input model teaches every member's fine-tune, not the run, which decides the members'
    # structures from the labels alone: taught, it kept the last stream wide (110-116 of 128 channels
    # against 76-86) at the early layers' expense, which a member's short fine-tune did not recover
    # from (bundled task from a trained input, 5 seeds: the 0.25x latency member 80.3% taught, 82.6%
    # not; the FLOPs members 0.05-0.24 points lower, within the seeds' spread).
    teacher, distill, teacher_check = _teacher(method, loaded, dataset, options)
    taught_set = with_teacher(dataset, teacher) if distill is not None else dataset

    def decide_now(params, goal, in_resource=resource):
        return decide(analysis, loaded, regs, params, threshold, in_resource, goal, hw, round_to)

    # Lambda's growth is sized on the first phase: its member is decided at its end, not the run's.
    # The first phase holds within shrink's window, the others within their own (phase_windows).
    windows = phase_windows(ends, (round(method.hold_from * total), round(method.hold_until * total)))
    measured = isinstance(hw, LatencyTable) and resource == "latency"
    calibrate = hold_calibrator(analysis, loaded, regs, threshold, full, budgets[0].relative, hw, round_to) \
        if measured and hold else None
    controller = PhasedController(analysis, loaded, regs, resource, targets[0], None, threshold, hw,
                                  total_steps=ends[0], targets=targets, ends=ends, hold=hold,
                                  decide_at=decide_now if hold else None, windows=windows if hold else None,
                                  calibrate=calibrate, **pace)
    # Each phase runs the schedule again: a budget's gates move under a high rate, not a decayed one.
    phased = replace(options, steps=total, restarts=tuple(ends[:-1]))
    trainer = Trainer(loaded, phased, regs, controller, target_shape=_target_shape(loaded, options), gates=gates,
                      hooks=HoldHooks(controller, regs) if hold or pace["proximal_step"] else None)
    progress, on_step, on_warning = _progress(options, controller, "shrink (family)")
    started = time.perf_counter()
    with progress:
        # Learning is judged on the first phase: the later ones push towards smaller budgets, and a loss
        # rising there is the budgets' price (each member's accuracy says what it cost), not a failure
        # to learn (measured: 1.95 -> 2.04 over a whole run towards 0.25x latency on the bundled task).
        result = trainer.run(dataset, on_step, val=val_set, on_warning=on_warning, snapshots=frozenset(ends[:-1]),
                             judge_until=ends[0])
    if not result.signal.learned and not method.force:
        raise MorphNetError(f"{loaded.name}: not deciding a structure: {result.signal.describe()}, so the gates "
                            f"carry no information; {LIKELY_CAUSES} (--force decides anyway)")
    finetune = method.finetune_steps if method.finetune_steps is not None else \
        max(1, round((FAMILY_COST - FAMILY_RUN_SHARE) * one_shrink / len(budgets)))
    # A member's fine-tune: cosine from FAMILY_FINETUNE_LR (taught: FAMILY_TAUGHT_FINETUNE_LR; a short
    # fine-tune less, member_finetune_lr) or --finetune-lr times --lr, taught by a trained input.
    # (Measured earlier on the bundled task, families of latency 0.75x,0.5x,0.25x, 3 seeds: from --lr
    # the members scored 85.7/85.8/54.4% on average, from a tenth of it 86.0/84.5/40.4%.)
    rate = method.finetune_lr if method.finetune_lr is not None else \
        member_finetune_lr(finetune, FAMILY_TAUGHT_FINETUNE_LR if distill is not None else FAMILY_FINETUNE_LR)
    tune_method = replace(method, finetune_schedule="cosine", finetune_lr=rate)
    family = FamilyResult(resource, [], result.steps, finetune, 0.0, list(result.warnings),
                          teacher_check.to_dict() if teacher_check is not None else None, rate)
    calibrations = controller.calibrations()
    for k, (budget, target) in enumerate(zip(budgets, targets)):
        params = result.snapshots.get(ends[k], result.params) if k < len(budgets) - 1 else result.params
        member = _member(loaded, analysis, regs, params, threshold, budget, target, full, full_costs, hw, round_to,
                         dataset, taught_set, val_set, options, finetune, input_shapes, outputs[k], structures[k],
                         ends[k], tune_method, distill, controller.targets[k])
        member["decision"]["hold_calibrations"] = [c for c in calibrations if controller.phase(c["step"]) == k]
        family.members.append(member)
    family.seconds = time.perf_counter() - started
    return family


def member_finetune_lr(steps: int, high: float) -> float:
    """A member's fine-tune's starting rate as a share of --lr: `high` for a fine-tune of
    FINETUNE_LR_RAMP[1] steps or more, one shrink's rate for one of FINETUNE_LR_RAMP[0] or fewer,
    linear in between (rounded to 0.1, so that the table says what ran)."""
    short, long = FINETUNE_LR_RAMP
    reach = min(max((steps - short) / (long - short), 0.0), 1.0)
    return round(SHRINK_FINETUNE_LR + reach * (high - SHRINK_FINETUNE_LR), 1)


def check_family_recipe(method: ShrinkOptions) -> None:
    """Refuse the recipe options a family decides itself (its members are cut at the phases' ends and
    fine-tuned for a share of FAMILY_COST; lambda's reach is the controller's own over the first
    phase), rather than ignore them."""
    defaults = {f.name: f.default for f in fields(ShrinkOptions)}
    for name, rule in (("cut", "each member is cut at the end of its phase"),
                       ("finetune_share", f"the run and the members' fine-tunes take {FAMILY_COST}x one shrink's "
                                          f"steps; --finetune-steps sets each fine-tune's"),
                       ("reach", "lambda's growth is sized on the first phase, as measured")):
        if getattr(method, name) != defaults[name]:
            raise MorphNetError(f"--{name.replace('_', '-')} {getattr(method, name)}: not for a family of budgets "
                                f"({rule})")


def _member(loaded, analysis, regs, params, threshold, budget, target, full, full_costs, hw, round_to, dataset,
            train_set, val_set, options, finetune, input_shapes, output, structure_path, step, tune_method, distill,
            held_target: float) -> dict:
    """Decide, cut, fine-tune, measure and write one member of the family."""
    resource = budget.resource
    trained = recalibrate_batchnorm(with_params(loaded.model, params), dataset, options.batch_size)
    trained_loaded = LoadedModel(model=trained, path=loaded.path, shapes=loaded.shapes, dtypes=loaded.dtypes,
                                 upgraded_from=loaded.upgraded_from)
    landing = None
    if isinstance(hw, LatencyTable) and resource == "latency":
        landing = land_on_rank_zero(analysis, trained_loaded, regs, params, threshold, target, full, budget.relative,
                                    hw, round_to, loaded.model, loaded.shapes, first_target=held_target)
        decision, surgery = landing.decision, landing.surgery
    else:
        decision = decide(analysis, trained_loaded, regs, params, threshold, resource, target, hw, round_to)
        surgery = cut_for_training(trained_loaded, analysis, decision.structure)
    verify_model(surgery.model, f"the shrunk model {output or ''}".strip())
    after_loaded = load(surgery.model, input_shapes)
    cut = evaluate_model(surgery.model, val_set, options.loss) if val_set and finetune else None
    if finetune:
        tuned, _ = _finetune(after_loaded, train_set, val_set, options, finetune, tune_method, distill,
                             offset=0, total=finetune)
        verify_model(tuned, f"the fine-tuned shrunk model {output or ''}".strip())
        after_loaded = load(tuned, input_shapes)
    written = after_loaded.model
    after_costs = compute_costs(analyze(after_loaded), after_loaded, hw)
    validation = evaluate_model(written, val_set, options.loss) if val_set else None
    if output is not None and is_main():
        _write(written, output, loaded, dataset)
    record = dict(decision.to_dict(), written_cost=resource_cost(after_costs, resource), finetune_steps=finetune)
    if structure_path is not None and is_main():
        surgery.structure.save(structure_path, analysis, loaded.name, decision=record)
    warnings = [_forced_warning(decision, resource)] if decision.forced else []
    latency = {}
    if isinstance(hw, LatencyTable) and is_main():
        latency = measured_report(analysis, trained_loaded, loaded, written, hw, decision, full_costs,
                                  target if resource == "latency" else None, budget, landing, warnings)
    return {"budget": budget.text, "target": target, "output": str(output) if output else None,
            "decided_at_step": step, "cost_before": full, "cost_after": record["written_cost"],
            "cost_ratio": record["written_cost"] / full if full else 0.0,
            "flops_before": full_costs.flops, "flops_after": after_costs.flops,
            "params_before": full_costs.params, "params_after": after_costs.params,
            "accuracy": validation.accuracy if validation else None, "mse": validation.mse if validation else None,
            "cut_accuracy": cut.accuracy if cut else None, "decision": record, "latency": latency,
            "warnings": warnings}
