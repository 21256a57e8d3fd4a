"""The training commands: `shrink` (MorphNet) and `train` (the baseline).

shrink = load -> analyze -> regularize + train (onnxruntime-training) -> decide (alive channels,
budget enforced) -> surgery -> write. The budget mode adapts lambda during training until the
alive structure meets the budget, then holds it (method/controller.py); `strength` gives lambda by
hand. Budgets: cost/budget.py; deciding the structure: method/decision.py; evaluation:
training/evaluation.py; batch-norm statistics: training/batchnorm.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from ..analysis.groups import Analysis
from ..analysis.walk import analyze
from ..cost.budget import Budget
from ..cost.latency import LatencyTable
from ..cost.resources import compute_costs, resource_cost
from ..cost.widths import fast_widths
from ..errors import MorphNetError
from ..expansion.initialization import INITS, initialize_weights
from ..graph_utils import with_params
from ..loading.model import LoadedModel, load
from ..loading.shapes import InputShapes
from ..loading.writing import refuse_overwriting, save_model
from ..method.controller import BudgetController
from ..method.decision import Decision, decide
from ..method.figs import FIGS_THRESHOLD, figs_regularizers
from ..method.landing import check_floor, measured_report
from ..method.progressive import HoldHooks
from ..method.regularizers import group_regularizers
from ..surgery.feasibility import floor_structure
from ..surgery.pruning import cut_for_training, prepare, verify_model
from ..surgery.structure import Structure
from ..training.backend import Distill
from ..training.batchnorm import recalibrate_batchnorm
from ..training.data import load_data, open_data
from ..training.dataset import Dataset
from ..training.distillation import TeacherCheck, check_teacher, softened, teacher_logits, with_teacher
from ..training.distributed import is_main
from ..training.evaluation import Evaluation, evaluate, evaluate_model
from ..training.graph import check_trainable
from ..training.health import LIKELY_CAUSES, MAX_WRITTEN_GAP, chance_accuracy, learning_warnings
from ..training.images import write_classes
from ..training.trainer import StepInfo, Trainer, TrainOptions, TrainResult
from .measured import hold_calibrator, land_on_rank_zero, recipe_hardware
from .options import SHRINK_FIELDS, SHRINK_FINETUNE_LR, ShrinkOptions

# Re-exported: the learning layer's public names in one place.
__all__ = ["Budget", "BudgetController", "Evaluation", "LearnResult", "ShrinkOptions", "evaluate", "load_data",
           "resource_cost", "shrink", "train"]



# ---- train and shrink -----------------------------------------------------------------------------------

@dataclass
class LearnResult:
    model: onnx.ModelProto
    structure: Structure | None
    analysis: Analysis
    cost_before: float
    cost_after: float
    resource: str
    flops_before: float
    flops_after: float
    params_before: int
    params_after: int
    validation: Evaluation | None
    steps: int
    seconds: float
    lambda_log: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    learning: dict = field(default_factory=dict)  # the learning guard's measurements (training/health.py)
    decision: dict = field(default_factory=dict)  # shrink: learned vs decided vs written cost (decision.py)
    cut_validation: Evaluation | None = None  # shrink: the pruned model before its fine-tuning
    session_accuracy: float | None = None  # validation top-1 of the trained weights inside the session
    warnings: list[str] = field(default_factory=list)  # the learning guard's findings
    latency: dict = field(default_factory=dict)  # --hardware measure: the written model measured (method/landing.py)
    classes: list[str] | None = None  # an image folder's class names by label (written beside the model)

    def to_dict(self) -> dict:
        return {
            "resource": self.resource, "cost_before": self.cost_before, "cost_after": self.cost_after,
            "flops_before": self.flops_before, "flops_after": self.flops_after,
            "params_before": self.params_before, "params_after": self.params_after,
            "validation": self.validation.to_dict() if self.validation else None,
            "session_accuracy": self.session_accuracy, "learning": self.learning, "decision": self.decision,
            "cut_validation": self.cut_validation.to_dict() if self.cut_validation else None,
            "steps": self.steps, "seconds": self.seconds, "notes": self.notes, "warnings": self.warnings,
            "classes": self.classes,
            **({"latency": self.latency} if self.latency else {}),
        }


def _progress(options: TrainOptions, controller: BudgetController | None, label: str):
    """A rich progress bar showing loss, regularizer, cost vs budget and alive share."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[stats]}"), disable=not (options.progress and is_main()),
                        transient=False)
    task = progress.add_task(label, total=None, stats="")

    def on_step(info: StepInfo) -> None:
        if info.step % 10 and info.step != info.total:
            return
        stats = f"loss {info.task:.3f}"
        if controller is not None:
            budget = f"/{controller.target / controller.full:.2f}x" if controller.target else ""
            stats += (f" reg {info.reg:.3f} {controller.resource} {controller.cost / controller.full:.2f}x{budget}"
                      f" alive {controller.alive_share:.0%}")
        progress.update(task, completed=info.step, total=info.total, stats=stats)

    def on_warning(text: str) -> None:
        if options.progress and is_main():  # right away, above the bar; the result carries it for everyone else
            progress.console.print(f"[W] {text}", markup=False, highlight=False)

    return progress, on_step, on_warning


def _guard(result: TrainResult, validation: Evaluation | None, val_set: Dataset | None,
           pruned: bool = False) -> list[str]:
    """The early warnings of the run, plus what the finished run and the written model show."""
    written = validation.accuracy if validation is not None else None
    chance = chance_accuracy(val_set.labels) if val_set is not None and written is not None else None
    # The written model of `train` must compute what was trained; a pruned one is compared below.
    session = None if pruned else result.session_accuracy
    final = learning_warnings(result.signal, written, session, chance)
    if pruned and written is not None and result.session_accuracy is not None \
            and result.session_accuracy - written > MAX_WRITTEN_GAP:
        final.append(f"the shrunk model scores {written:.1%} on the validation data, the trained model before "
                     f"the cut {result.session_accuracy:.1%}: the cut removed channels that still mattered "
                     f"(train longer, or raise --strength, so that the regularizer does the pruning)")
    early = [] if not result.signal.learned else result.warnings  # the final verdict repeats it for the whole run
    return early + final


def train(model, data=None, output=None, val=None, options: TrainOptions | None = None, data_module: str | None = None,
          input_shapes: InputShapes | None = None, init: str = "keep") -> LearnResult:
    """Plain training (no regularizer): the baseline every MorphNet result is compared with.

    `model`, `data`/`data_module`, `output`, `val`, `options`, `input_shapes`: as for `shrink`.

    `init`: "keep" trains from the model's weights; "fresh" re-initialises every weight first
    (seeded by `options.seed`; initialization.py), so that any model is retrained from scratch.
    """
    options = options or TrainOptions()
    if init not in INITS:
        raise MorphNetError(f"--init {init}: choose one of {', '.join(INITS)}")
    refuse_overwriting({"-o": output}, [model, data, val])
    # Placeholder weights (ConstantOfShape) mean an untrained model: they start random.
    loaded, analysis = prepare(model, input_shapes, seed=options.seed)
    check_trainable(loaded)
    if init == "fresh":
        loaded.model = initialize_weights(loaded.model, options.seed)
    dataset, val_set = open_data(data, val, data_module, loaded, options.loss, options.images)
    trainer = Trainer(loaded, options, target_shape=_target_shape(loaded, options))
    progress, on_step, on_warning = _progress(options, None, "train")
    with progress:
        result = trainer.run(dataset, on_step, val=val_set, on_warning=on_warning)
    trained = recalibrate_batchnorm(with_params(loaded.model, result.params), dataset, options.batch_size)
    verify_model(trained, f"the trained model {output or ''}".strip())
    costs = compute_costs(analysis, loaded)
    validation = evaluate_model(trained, val_set, options.loss) if val_set else None
    if output is not None and is_main():  # under torchrun, rank 0 writes
        _write(trained, output, loaded, dataset)
    return LearnResult(model=trained, structure=None, analysis=analysis, cost_before=costs.flops,
                       cost_after=costs.flops, resource="flops", flops_before=costs.flops, flops_after=costs.flops,
                       params_before=costs.params, params_after=costs.params, validation=validation,
                       steps=result.steps, seconds=result.seconds, learning=result.signal.to_dict(), session_accuracy=result.session_accuracy,
                       warnings=_guard(result, validation, val_set), classes=dataset.classes)


def _write(model: onnx.ModelProto, output, loaded: LoadedModel, dataset: Dataset) -> None:
    """The model, and the class names of an image folder beside it (images.py)."""
    save_model(model, Path(output), inputs=[loaded.path] if loaded.path else [])
    if dataset.classes is not None:
        write_classes(output, dataset.classes)


def _target_shape(loaded: LoadedModel, options: TrainOptions) -> list[int] | None:
    if options.loss != "mse":
        return None
    shape = list(loaded.shapes[loaded.model.graph.output[0].name])
    shape[0] = options.batch_size
    return shape




def shrink(model, data=None, output=None, val=None, method: ShrinkOptions | None = None,
           options: TrainOptions | None = None, data_module: str | None = None,
           input_shapes: InputShapes | None = None, structure_path=None, **method_fields) -> LearnResult:
    """MorphNet: train with the resource-weighted regularizer, keep the channels worth their cost,
    fine-tune the smaller model briefly and write it.

    >>> shrink("resnet.onnx", "train.npz", "small.onnx", val="val.npz",
    ...        method=ShrinkOptions(budget=Budget("flops", "0.5x")))  # doctest: +SKIP
    >>> shrink("resnet.onnx", "train.npz", "small.onnx", budget=Budget("flops", "0.5x"))  # the same  # doctest: +SKIP

    - `model`: a path or ModelProto; `data`: the training data, an .npz, a folder of .npy files or a
      folder of class folders of images (training/data.py; or `data_module`, "pkg.mod:fn" returning
      an iterable of batches); `output`: where to write (None: nothing written; an image folder's
      class names go beside it, `OUT.onnx.classes.json`); `val`: validation data, the same kinds
      (accuracy before and after). How image folders are read: `options.images`.
    - `method`: a `ShrinkOptions` (budget or strength, regularizer, threshold, rounding...); or its
      fields given as keywords (`budget=...`), not both.
    - `options`: the `TrainOptions` (steps, lr, schedule, seed, backend, checkpoints...).
    - `input_shapes`: static shapes for symbolic input dims; `structure_path`: also write the
      learned structure (with the decision record) there (`--save-structure`).

    A run whose training loss never fell decides nothing (MorphNetError) unless `method.force`.
    """
    unknown = sorted(set(method_fields) - set(SHRINK_FIELDS))
    if unknown:
        raise TypeError(f"shrink() got unexpected keyword arguments: {', '.join(unknown)}")
    if method is not None and method_fields:
        raise TypeError("shrink(): give `method` or its fields as keywords, not both")
    method = method if method is not None else ShrinkOptions(**method_fields)
    options = options or TrainOptions()
    refuse_overwriting({"-o": output, "--save-structure": structure_path}, [model, data, val])
    loaded, analysis = prepare(model, input_shapes, list(method.keep) if method.keep else None, seed=options.seed)
    check_trainable(loaded)
    hw = recipe_hardware(method, loaded, progress=options.progress and is_main())
    round_to = fast_widths(hw, analysis) if method.round_to == "auto" else method.round_to
    budget, threshold = method.budget, method.threshold
    resource = budget.resource if budget else "flops"
    full_costs = compute_costs(analysis, loaded, hw)
    full = resource_cost(full_costs, resource)
    target = budget.target(full) if budget else None
    check_shrinkable(loaded, analysis, hw, resource, full, target, budget.text if budget else "")
    gates = None
    if method.regularizer == "figs":
        regs, gates = figs_regularizers(analysis, loaded)
        threshold = FIGS_THRESHOLD  # FiGS decides on the probability of a gate being on
    else:
        regs = group_regularizers(analysis, loaded, method.regularizer, method.grouping)
    if not regs:
        raise MorphNetError(f"{loaded.name}: no prunable group has a gate for the {method.regularizer} regularizer "
                            f"(a BatchNormalization scale, or filters held as weights rather than computed)")
    dataset, val_set = open_data(data, val, data_module, loaded, options.loss, options.images)
    total_steps = options.steps or options.epochs * dataset.batches_per_epoch(options.batch_size)
    plan = _plan_steps(method, total_steps)
    teacher, distill, teacher_check = _teacher(method, loaded, dataset, options)
    train_set = with_teacher(dataset, teacher) if distill is not None else dataset

    def decide_now(params, goal=target, in_resource=resource) -> Decision:
        return decide(analysis, loaded, regs, params, threshold, in_resource, goal, hw, round_to)

    cut_early = method.cut == "budget" and plan["finetune_min"] > 0 and target is not None
    hold = method.hold and target is not None and plan["finetune_min"] > 0
    pace = method.controller_pace()
    measured = isinstance(hw, LatencyTable) and resource == "latency"
    controller = BudgetController(analysis, loaded, regs, resource, target, method.strength, threshold, hw,
                                  total_steps=total_steps, reach=method.reach, hold=hold, cut_at_budget=cut_early,
                                  decide_at=decide_now,
                                  hold_window=(int(round(method.hold_from * total_steps)),
                                               int(round(method.hold_until * total_steps))),
                                  calibrate=hold_calibrator(analysis, loaded, regs, threshold, full, budget.relative,
                                                            hw, round_to) if measured and hold else None,
                                  **pace)
    hooks = HoldHooks(controller, regs) if (hold or cut_early or pace["proximal_step"]) else None
    learn_options = replace(options, steps=plan["learn_max"])
    # The learning rate follows one schedule over the whole run (cut early or not): the steps after
    # the cut continue it or start their own (finetune_schedule).
    trainer = Trainer(loaded, learn_options, regs, controller, target_shape=_target_shape(loaded, options),
                      gates=gates, distill=distill, schedule=(0, total_steps) if cut_early else None, hooks=hooks)
    progress, on_step, on_warning = _progress(learn_options, controller, "shrink")
    with progress:
        result = trainer.run(train_set, on_step, val=val_set, on_warning=on_warning)
    if not result.signal.learned and not method.force:
        raise MorphNetError(f"{loaded.name}: not deciding a structure: {result.signal.describe()}, so the gates "
                            f"carry no information; {LIKELY_CAUSES} (--force decides anyway)")
    trained = recalibrate_batchnorm(with_params(loaded.model, result.params), dataset, options.batch_size)
    trained_loaded = LoadedModel(model=trained, path=loaded.path, shapes=loaded.shapes, dtypes=loaded.dtypes,
                                 upgraded_from=loaded.upgraded_from)
    landing = None
    if measured:  # the runtime has the last word
        # (held channels read zero, so the landing's ranking keeps them out as the cut would; its first
        # try is the hold's calibrated target)
        landing = land_on_rank_zero(analysis, trained_loaded, regs, result.params, threshold, target, full,
                                    budget.relative, hw, round_to, loaded.model, loaded.shapes,
                                    first_target=controller.target)
        decision, surgery = landing.decision, landing.surgery
    else:
        if controller.cut_structure is not None:  # decided when the learned structure met the budget
            structure = Structure.full(analysis)
            for group_id, channels in controller.cut_structure.items():
                structure.alive[group_id][:] = False
                structure.alive[group_id][channels] = True
            # the record of the decision made then (restored with the checkpoint when the run was resumed)
            decision = (replace(controller.decision, structure=structure) if controller.decision is not None
                        else Decision(structure=structure, **controller.decision_record))
        else:
            decision = decide_now(result.params)
        surgery = cut_for_training(trained_loaded, analysis, decision.structure)
    verify_model(surgery.model, f"the shrunk model {output or ''}".strip())
    after_loaded = load(surgery.model, input_shapes)
    remaining = total_steps - result.steps if plan["finetune_min"] > 0 else 0
    cut_validation = evaluate_model(surgery.model, val_set, options.loss) if val_set else None
    tuned_steps = 0
    if remaining > 0:
        tuned, tuned_steps = _finetune(after_loaded, train_set, val_set, options, remaining, method, distill,
                                       offset=result.steps, total=total_steps)
        verify_model(tuned, f"the fine-tuned shrunk model {output or ''}".strip())
        after_loaded = load(tuned, input_shapes)
    else:
        cut_validation = None  # written as cut: the validation below is that model's
    written_model = after_loaded.model
    after_costs = compute_costs(analyze(after_loaded), after_loaded, hw)
    validation = evaluate_model(written_model, val_set, options.loss) if val_set else None
    if output is not None and is_main():  # under torchrun, rank 0 writes
        _write(written_model, output, loaded, dataset)
    written_cost = resource_cost(after_costs, resource)
    cut_accuracy = cut_validation.accuracy if cut_validation is not None else (
        validation.accuracy if validation is not None else None)
    record = dict(decision.to_dict(), written_cost=written_cost, finetune_steps=tuned_steps,
                  learn_steps=result.steps, cut_step=result.steps, total_steps=total_steps,
                  held_channels=controller.held_count(), cut=method.cut if cut_early else "end",
                  decided_at=controller.frozen_at, hold_calibrations=controller.calibrations(),
                  cut_cost=(result.session_accuracy - cut_accuracy) if result.session_accuracy is not None
                  and cut_accuracy is not None else None,
                  teacher=teacher_check.to_dict() if teacher_check is not None else None)
    if structure_path is not None and is_main():
        surgery.structure.save(structure_path, analysis, loaded.name, decision=record)
    warnings = _guard(result, validation, val_set, pruned=True)
    if decision.forced:
        warnings.insert(0, _forced_warning(decision, resource))
    latency = {}
    if isinstance(hw, LatencyTable) and is_main():
        latency = measured_report(analysis, trained_loaded, loaded, written_model, hw, decision, full_costs,
                                  target if resource == "latency" else None, budget, landing, warnings)
    return LearnResult(model=written_model, structure=surgery.structure, analysis=analysis, cost_before=full,
                       cost_after=written_cost, resource=resource, flops_before=full_costs.flops,
                       flops_after=after_costs.flops, params_before=full_costs.params,
                       params_after=after_costs.params, validation=validation, steps=result.steps + tuned_steps,
                       seconds=result.seconds, lambda_log=controller.log, notes=surgery.notes, learning=result.signal.to_dict(), session_accuracy=result.session_accuracy,
                       warnings=warnings, decision=record, cut_validation=cut_validation, classes=dataset.classes,
                       latency=latency)


def _plan_steps(method: ShrinkOptions, total: int) -> dict:
    """How the run's steps divide: at most `learn_max` regularized, at least `finetune_min` after the cut."""
    if method.finetune_steps is not None:
        finetune = method.finetune_steps
    else:
        finetune = int(round(method.finetune_share * total))
    if finetune >= total:
        raise MorphNetError(f"--finetune-steps {finetune} leaves no step of the {total} to learn the structure: "
                            f"give more --steps (the whole run), or fewer --finetune-steps")
    return {"learn_max": total - finetune, "finetune_min": finetune}


def _teacher(method: ShrinkOptions, loaded: LoadedModel, dataset: Dataset,
             options: TrainOptions) -> tuple[np.ndarray | None, Distill | None, TeacherCheck | None]:
    """The input model's softened probabilities for every training example and the loss's settings
    when it teaches (None, None otherwise; see distillation.py), and what was measured of it."""
    if method.distill == "off":
        return None, None, None
    if options.loss != "ce":
        if method.distill == "on":
            raise MorphNetError("--distill on needs a classification loss (--loss ce): the teacher's class "
                                "probabilities are what the shrunk model learns from")
        return None, None, None
    logits = teacher_logits(loaded.model, dataset)
    check = check_teacher(logits, dataset.labels, method.distill)
    if not check.used:
        return None, None, check
    return (softened(logits, method.distill_temperature), Distill(method.distill_weight, method.distill_temperature),
            check)


def check_shrinkable(loaded: LoadedModel, analysis: Analysis, hw, resource: str, full: float,
                     target: float | None, text: str) -> None:
    """A model shrink can work on: some group prunable, and a target (if any) below the model's cost
    `full` (in `resource`, which both callers have already computed) and at or above what it costs
    with every prunable group at its minimum."""
    if not analysis.prunable_groups:
        raise MorphNetError(f"{loaded.name}: nothing to prune (no prunable channel group; see `inspect`)")
    if target is None:
        return
    floor_alive = floor_structure(loaded, analysis).element_alive(analysis)
    floor = resource_cost(compute_costs(analysis, loaded, hw, alive=floor_alive), resource)
    if isinstance(hw, LatencyTable) and resource == "latency":
        check_floor(hw, full, target, floor, text)
    if target < floor:
        raise MorphNetError(f"budget {text} ({target:.4g}) is below what the unprunable part of the model "
                            f"costs ({floor:.4g} of {full:.4g} {resource}, every prunable group at its minimum); "
                            f"raise the budget")
    if target >= full:
        raise MorphNetError(f"budget {text} is not below the model's cost ({full:.4g} {resource}); "
                            f"nothing to shrink")


def _finetune(loaded: LoadedModel, dataset: Dataset, val_set: Dataset | None, options: TrainOptions,
              steps: int, method: ShrinkOptions, distill: Distill | None, offset: int,
              total: int) -> tuple[onnx.ModelProto, int]:
    """Training of the pruned model for the rest of the steps; its batch-norm statistics re-measured."""
    lr = options.lr * (SHRINK_FINETUNE_LR if method.finetune_lr is None else method.finetune_lr)
    if method.finetune_schedule == "continue":
        tune = replace(options, steps=steps, lr=lr, checkpoint_dir=None, resume=False)
        schedule = (offset, total)
    else:
        tune = replace(options, steps=steps, lr=lr, schedule="cosine", checkpoint_dir=None, resume=False)
        schedule = None
    trainer = Trainer(loaded, tune, target_shape=_target_shape(loaded, tune), distill=distill, schedule=schedule)
    progress, on_step, on_warning = _progress(tune, None, "fine-tune")
    with progress:
        result = trainer.run(dataset, on_step, val=val_set, on_warning=on_warning)
    return recalibrate_batchnorm(with_params(loaded.model, result.params), dataset, tune.batch_size), result.steps


def _forced_warning(decision: Decision, resource: str) -> str:
    full = max(decision.full_cost, 1e-30)
    return (f"training ended with the learned structure at {decision.learned_cost / full:.2f}x of the model's "
            f"{resource} (budget {decision.target / full:.2f}x): {decision.forced_cuts} channels whose gates were "
            f"still above the threshold (up to {decision.largest_cut_gate:.3g}) were cut to meet the budget, so "
            f"the shrunk model loses accuracy the regularizer did not trade; train longer (--steps/--epochs) "
            f"or raise --strength")



