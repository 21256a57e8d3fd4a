"""The training commands: `shrink` (MorphNet) and `train` (the baseline).

shrink = load -> analyze -> regularize + train (onnxruntime-training) -> decide (alive channels,
budget enforced) -> surgery -> write. The budget mode adapts lambda during training until the
alive structure meets the budget, then holds it (method/controller.py); `strength` gives lambda by
hand. Budgets: cost/budget.py; deciding the structure: method/decision.py; evaluation:
training/evaluation.py; batch-norm statistics: training/batchnorm.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import onnx

from ..analysis.groups import Analysis
from ..analysis.walk import analyze
from ..cost.budget import Budget
from ..cost.latency import LatencyTable
from ..cost.resources import compute_costs, is_measure, parse_hardware, resource_cost
from ..cost.timing import LatencySettings
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
from ..method.landing import check_floor, land, measured_report
from ..method.regularizers import GROUPINGS, REGULARIZERS, group_regularizers
from ..surgery.apply import apply_structure
from ..surgery.feasibility import floor_structure
from ..surgery.latency import resolve_hardware
from ..surgery.pruning import check_round_to, prepare, verify_model
from ..surgery.structure import Structure
from ..training.batchnorm import recalibrate_batchnorm
from ..training.data import load_data, open_data
from ..training.dataset import Dataset
from ..training.distributed import is_main
from ..training.evaluation import Evaluation, evaluate, evaluate_model
from ..training.graph import check_trainable
from ..training.images import write_classes
from ..training.health import LIKELY_CAUSES, MAX_WRITTEN_GAP, chance_accuracy, learning_warnings
from ..training.trainer import StepInfo, Trainer, TrainOptions, TrainResult

# Re-exported: the learning layer's public names in one place.
__all__ = ["Budget", "BudgetController", "Evaluation", "LearnResult", "ShrinkOptions", "evaluate", "load_data",
           "resource_cost", "shrink", "train"]

# shrink ends with a fine-tune of the pruned model: this share of the training steps, at this share
# of the learning rate.
FINETUNE_SHARE = 0.1
FINETUNE_LR_SHARE = 0.1


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


@dataclass(frozen=True)
class ShrinkOptions:
    """How `shrink` learns and cuts: each field is the CLI option of the same name (`--budget-*` for
    `budget`). `TrainOptions` says how it trains. Checked when made, with the CLI's one-line errors.

    - `budget`: a `Budget` (FLOPs, size or latency, relative or absolute) that the controller adapts
      lambda to; or `strength`: a fixed lambda (manual mode). Exactly one.
    - `regularizer`: "auto" (gamma where a group has a BatchNormalization, else group lasso),
      "gamma", "group-lasso" or "figs"; `threshold`: a channel is alive while its gate is above it
      (FiGS decides on the probability of its gate being on instead).
    - `grouping`: how the gates of a group written by several ops (a residual stream) combine:
      "max" (MorphNet's default: alive while any member is) or "l2" (sqrt of the sum of squares,
      morph-net's L2 grouping: every member pushed at once; docs/training.md).
    - `hardware`, `cost_batch_size`: the latency roofline (`--budget-latency`) and its batch; or
      "measure": the model timed in onnxruntime (`provider`, `latency_threads`, batch
      `cost_batch_size`; the table read from or written to `latency_table`), the regularizer and
      `decide` on the table, the written model measured against the original (method/landing.py).
    - `round_to`: widths multiples of it ("auto": the widths the measured table shows to be fast);
      `keep`: regexes of ops whose channels stay.
    - `finetune_steps`: steps of plain training of the pruned model (at FINETUNE_LR_SHARE of the
      learning rate, cosine), as every pruning tool ends; None: FINETUNE_SHARE of the training
      steps; 0: none, the model is written as cut.
    - `force`: decide even when the training loss never fell (its gates then say what the
      initialisation was, not which channels are worth their cost).
    """
    budget: Budget | None = None
    strength: float | None = None
    regularizer: str = "auto"
    threshold: float = 1e-2
    grouping: str = "max"
    hardware: str | None = None
    cost_batch_size: int = 1
    round_to: int | str = 1
    keep: tuple[str, ...] | None = None
    finetune_steps: int | None = None
    force: bool = False
    provider: str = "CPUExecutionProvider"
    latency_threads: int = 0
    latency_table: str | None = None

    @property
    def measured(self) -> bool:
        return is_measure(self.hardware) or self.latency_table is not None

    def __post_init__(self) -> None:
        if (self.budget is None) == (self.strength is None):
            raise MorphNetError("give either a budget (--budget-flops/--budget-size/--budget-latency) or --strength")
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise MorphNetError(f"budget {self.budget!r}: expected a Budget, e.g. Budget(\"flops\", \"0.5x\")")
        if self.strength is not None and (isinstance(self.strength, bool) or not isinstance(self.strength, (int, float))
                                          or not self.strength > 0):
            raise MorphNetError(f"--strength {self.strength}: must be above 0")
        if self.regularizer not in REGULARIZERS:
            raise MorphNetError(f"--regularizer {self.regularizer}: choose one of {', '.join(REGULARIZERS)}")
        if self.grouping not in GROUPINGS:
            raise MorphNetError(f"--grouping {self.grouping}: choose one of {', '.join(GROUPINGS)}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not self.threshold > 0:
            raise MorphNetError(f"--threshold {self.threshold}: must be above 0")
        if self.measured:
            LatencySettings(self.provider, self.latency_threads, self.cost_batch_size)
        else:
            parse_hardware(self.hardware, self.cost_batch_size)
        if self.round_to != "auto":
            check_round_to(self.round_to)
        elif not self.measured:
            raise MorphNetError("--round-to auto snaps widths to the ones a measured latency table shows to be "
                                "fast: add --hardware measure")
        steps = self.finetune_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise MorphNetError(f"--finetune-steps {steps}: must be a whole number, 0 or more")
        if isinstance(self.keep, str):  # one pattern given bare: not its characters
            object.__setattr__(self, "keep", (self.keep,))
        elif self.keep is not None:
            object.__setattr__(self, "keep", tuple(self.keep))


SHRINK_FIELDS = tuple(f.name for f in fields(ShrinkOptions))


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
    hw = resolve_hardware(method.hardware, method.cost_batch_size, loaded, method.provider, method.latency_threads,
                          method.latency_table, progress=options.progress and is_main())
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
    controller = BudgetController(analysis, loaded, regs, resource, target, method.strength, threshold, hw,
                                  total_steps=total_steps)
    trainer = Trainer(loaded, options, regs, controller, target_shape=_target_shape(loaded, options), gates=gates)
    progress, on_step, on_warning = _progress(options, controller, "shrink")
    with progress:
        result = trainer.run(dataset, on_step, val=val_set, on_warning=on_warning)
    if not result.signal.learned and not method.force:
        raise MorphNetError(f"{loaded.name}: not deciding a structure: {result.signal.describe()}, so the gates "
                            f"carry no information; {LIKELY_CAUSES} (--force decides anyway)")
    trained = recalibrate_batchnorm(with_params(loaded.model, result.params), dataset, options.batch_size)
    trained_loaded = LoadedModel(model=trained, path=loaded.path, shapes=loaded.shapes, dtypes=loaded.dtypes,
                                 upgraded_from=loaded.upgraded_from)
    landing = None
    if isinstance(hw, LatencyTable) and resource == "latency":  # the runtime has the last word
        landing = land(analysis, trained_loaded, regs, result.params, threshold, target, full, budget.relative, hw,
                       round_to, loaded.model, loaded.shapes)
        decision, surgery = landing.decision, landing.surgery
    else:
        decision = decide(analysis, trained_loaded, regs, result.params, threshold, resource, target, hw, round_to)
        surgery = apply_structure(trained_loaded, analysis, decision.structure, approximate_borders=True)
    verify_model(surgery.model, f"the shrunk model {output or ''}".strip())
    after_loaded = load(surgery.model, input_shapes)
    steps = method.finetune_steps if method.finetune_steps is not None else max(1, round(FINETUNE_SHARE * result.steps))
    cut_validation = None
    if steps:
        cut_validation = evaluate_model(surgery.model, val_set, options.loss) if val_set else None
        tuned = _finetune(after_loaded, dataset, val_set, options, steps)
        verify_model(tuned, f"the fine-tuned shrunk model {output or ''}".strip())
        after_loaded = load(tuned, input_shapes)
    written_model = after_loaded.model
    after_costs = compute_costs(analyze(after_loaded), after_loaded, hw)
    validation = evaluate_model(written_model, val_set, options.loss) if val_set else None
    if output is not None and is_main():  # under torchrun, rank 0 writes
        _write(written_model, output, loaded, dataset)
    written_cost = resource_cost(after_costs, resource)
    record = dict(decision.to_dict(), written_cost=written_cost, finetune_steps=steps)
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
                       params_after=after_costs.params, validation=validation, steps=result.steps,
                       seconds=result.seconds, lambda_log=controller.log, notes=surgery.notes, learning=result.signal.to_dict(), session_accuracy=result.session_accuracy,
                       warnings=warnings, decision=record, cut_validation=cut_validation, classes=dataset.classes,
                       latency=latency)


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
              steps: int) -> onnx.ModelProto:
    """Plain training of the pruned model for a few steps; its batch-norm statistics re-measured."""
    tune = replace(options, steps=steps, lr=options.lr * FINETUNE_LR_SHARE, schedule="cosine",
                   checkpoint_dir=None, resume=False)
    trainer = Trainer(loaded, tune, target_shape=_target_shape(loaded, tune))
    progress, on_step, on_warning = _progress(tune, None, "fine-tune")
    with progress:
        result = trainer.run(dataset, on_step, val=val_set, on_warning=on_warning)
    return recalibrate_batchnorm(with_params(loaded.model, result.params), dataset, tune.batch_size)


def _forced_warning(decision: Decision, resource: str) -> str:
    full = max(decision.full_cost, 1e-30)
    return (f"training ended with the learned structure at {decision.learned_cost / full:.2f}x of the model's "
            f"{resource} (budget {decision.target / full:.2f}x): {decision.forced_cuts} channels whose gates were "
            f"still above the threshold (up to {decision.largest_cut_gate:.3g}) were cut to meet the budget, so "
            f"the shrunk model loses accuracy the regularizer did not trade; train longer (--steps/--epochs) "
            f"or raise --strength")



