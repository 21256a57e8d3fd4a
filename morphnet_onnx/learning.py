"""Structure learning and training: `shrink` (MorphNet), `train` (the baseline), `evaluate`.

shrink = load -> analyze -> regularize + train (onnxruntime-training) -> decide (alive channels,
budget enforced) -> surgery -> write. The budget mode adapts lambda during training until the
alive structure meets the budget, then holds it; `strength` gives lambda by hand.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .analysis import Analysis, analyze
from .cost import compute_costs, parse_hardware, resource_cost
from .decision import Decision, decide
from .errors import MorphNetError
from .figs import FIGS_THRESHOLD, figs_regularizers
from .io import InputShapes, LoadedModel, load, onnx_opset, save_model
from .pruning import prepare, verify_model
from .regularizers import REGULARIZERS, GroupRegularizer, channel_weights, group_regularizers, group_vectors
from .runtime import make_session
from .structure import Structure
from .surgery import apply_structure, repair_structure, vanishable_groups
from .training.data import Dataset, input_specs, load_module_batches, load_npz
from .training.health import LIKELY_CAUSES, MAX_WRITTEN_GAP, chance_accuracy, learning_warnings
from .training.trainer import StepInfo, Trainer, TrainOptions, TrainResult

# shrink ends with a fine-tune of the pruned model: this share of the training steps, at this share
# of the learning rate.
FINETUNE_SHARE = 0.1
# Budget mode: lambda may grow by this factor within this share of the run's lambda updates.
LAMBDA_SPAN = 1e3
LAMBDA_REACH = 0.5
FINETUNE_LR_SHARE = 0.1
UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass
class Budget:
    resource: str  # flops | size | latency
    text: str

    def target(self, full_cost: float) -> float:
        text = self.text.strip().lower()
        if text.endswith("x"):
            value = _number(text[:-1], self.text)
            if not 0 < value:
                raise MorphNetError(f"--budget-{self.resource} {self.text}: must be above 0")
            return value * full_cost
        if self.resource == "latency":
            match = re.fullmatch(r"([0-9.e+-]+)\s*(s|ms|us)", text)
            if not match:
                raise MorphNetError(f"--budget-latency {self.text}: expected e.g. 0.5x or 1.2ms")
            return _number(match.group(1), self.text) * TIME_UNITS[match.group(2)]
        match = re.fullmatch(r"([0-9.e+-]+)\s*([kmgt]?)", text)
        if not match:
            raise MorphNetError(f"--budget-{self.resource} {self.text}: expected e.g. 0.5x or 2.1G")
        return _number(match.group(1), self.text) * UNITS[match.group(2)]


def _number(text: str, whole: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise MorphNetError(f"budget {whole!r}: {text!r} is not a number") from exc


class BudgetController:
    """Every `every` steps: threshold the gates, cost the alive structure, adapt lambda, and return
    the per-channel cost weights lambda x (MorphNet's marginal cost) / (full cost).

    Budget mode: lambda grows while the alive structure costs more than the budget; once it fits,
    lambda holds while the cost stays within [band x budget, budget] and eases off below that."""

    def __init__(self, analysis: Analysis, loaded: LoadedModel, regs: list[GroupRegularizer], resource: str,
                 target: float | None, strength: float | None, threshold: float, hardware, every: int = 25,
                 initial: float = 0.05, growth: float = 1.15, band: float = 0.9, gain: float = 1.0,
                 lookahead: float = 2.0, total_steps: int | None = None) -> None:
        self.analysis, self.loaded, self.regs = analysis, loaded, regs
        self.resource, self.target, self.threshold, self.hardware = resource, target, threshold, hardware
        self.every, self.band, self.gain = every, band, gain
        # A short run must still be able to raise lambda by LAMBDA_SPAN within LAMBDA_REACH of its
        # updates (measured: 650 steps at 15% per update never pruned the 2-D digits ResNet).
        updates = max((total_steps or 0) / every * LAMBDA_REACH, 1.0)
        self.growth = max(growth, LAMBDA_SPAN ** (1 / updates)) if total_steps else growth
        self.full = resource_cost(compute_costs(analysis, loaded, hardware), resource)
        self.strength = strength if strength is not None else initial
        self.manual = strength is not None
        self.met_at: int | None = None
        self.cost = self.full
        self.previous_cost: float | None = None
        self.lookahead = lookahead
        self.alive_share = 1.0
        self.log: list[dict] = []

    def alive_structure(self, params: dict[str, np.ndarray]) -> Structure:
        structure = Structure.full(self.analysis)
        for group_id, vector in group_vectors(self.regs, params).items():
            structure.alive[group_id] = vector > self.threshold
        return structure

    def __call__(self, step: int, get_params, force: bool = False):
        if step % self.every and not force:
            return None
        structure = self.alive_structure(get_params())
        alive = structure.element_alive(self.analysis)
        costs = compute_costs(self.analysis, self.loaded, self.hardware, alive=alive)
        self.cost = resource_cost(costs, self.resource)
        total = sum(r.width for r in self.regs)
        self.alive_share = sum(int(structure.alive[r.group_id].sum()) for r in self.regs) / max(total, 1)
        if not self.manual and self.target is not None and step > 0:
            # Proportional in log space, bounded: far over the budget lambda grows by `growth` per
            # update, near it by little (the thresholded cost lags the gates: a fixed step
            # overshoots), within [band x budget, budget] it holds, and below it eases off the same
            # way, or the held pressure keeps shrinking the model far below what the budget allows.
            # While over the budget but falling fast enough to reach it within `lookahead` updates,
            # lambda holds: the gates already on their way down get there without more push.
            ratio = self.cost / self.target
            falling = self.previous_cost - self.cost if self.previous_cost is not None else 0.0
            arriving = ratio > 1 and falling > 0 and self.cost - self.lookahead * falling <= self.target
            if arriving:
                pass
            elif ratio > 1 or ratio < self.band:
                if ratio <= 1 and self.met_at is None:
                    self.met_at = step
                step_factor = ratio if ratio > 1 else ratio / self.band
                self.strength *= float(np.clip(step_factor ** self.gain, self.growth ** -0.5, self.growth))
            elif self.met_at is None:
                self.met_at = step
        self.previous_cost = self.cost
        self.log.append({"step": step, "lambda": self.strength, "cost": self.cost, "alive_share": self.alive_share})
        marginal = costs.channel_marginal[self.resource]
        return (self.strength * channel_weights(self.regs, marginal) / max(self.full, 1e-30)).astype(np.float32)

    def state(self) -> dict:
        return {"strength": self.strength, "met_at": self.met_at, "previous_cost": self.previous_cost}

    def load_state(self, state: dict) -> None:
        self.strength = state.get("strength", self.strength)
        self.previous_cost = state.get("previous_cost")
        self.met_at = state.get("met_at")


# ---- data, weights, batch-norm statistics ----------------------------------------------------------

def load_data(path, module: str | None, loaded: LoadedModel, task: str) -> Dataset:
    specs = input_specs(loaded.model, loaded.shapes)
    classes = _classes(loaded) if task == "ce" else None
    if module:
        return load_module_batches(module, specs, task, classes)
    if path is None:
        raise MorphNetError("give --data train.npz or --data-module package.module:function")
    return load_npz(path, specs, task, classes)


def _classes(loaded: LoadedModel) -> int | None:
    shape = loaded.shapes.get(loaded.model.graph.output[0].name)
    return int(shape[-1]) if shape else None


def with_params(model: onnx.ModelProto, params: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of the model with new values for its initializers or Constant weights, by name."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in params:
            tensor.CopyFrom(numpy_helper.from_array(params[tensor.name].astype(
                onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)), tensor.name))
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output[0] in params and node.attribute[0].name == "value":
            value = params[node.output[0]].astype(onnx.helper.tensor_dtype_to_np_dtype(node.attribute[0].t.data_type))
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(value, node.output[0]))
    return out


def recalibrate_batchnorm(model: onnx.ModelProto, data: Dataset, batch: int, max_batches: int = 100) -> onnx.ModelProto:
    """Running statistics for every BatchNormalization, measured with batch statistics in the layers
    before it (as in training): onnxruntime-training keeps them frozen, so they are set here."""
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    if not bns:
        return model
    stats = onnx.ModelProto()
    stats.CopyFrom(model)
    opset = onnx_opset(stats)
    if opset < 15:
        stats = onnx.version_converter.convert_version(stats, 15)
    graph = stats.graph
    outputs = []
    for index, node in enumerate(n for n in graph.node if n.op_type == "BatchNormalization"):
        for a in list(node.attribute):
            if a.name == "training_mode":
                node.attribute.remove(a)
        node.attribute.append(onnx.helper.make_attribute("training_mode", 1))
        del node.output[1:]
        node.output.extend([f"{node.output[0]}__rm{index}", f"{node.output[0]}__rv{index}"])
        outputs.append((node, node.input[0], f"morphnet/bnstats_axes{index}"))
    del graph.output[:]
    del graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(stats)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in list(inferred.graph.value_info) + list(graph.input)}
    names = []
    for index, (node, x, axes) in enumerate(outputs):
        reduce_axes = [a for a in range(ranks.get(x, 4)) if a != 1]
        mean, sq, meansq = f"morphnet/bn_mean{index}", f"morphnet/bn_sq{index}", f"morphnet/bn_meansq{index}"
        graph.node.append(onnx.helper.make_node("Mul", [x, x], [sq]))
        for source, target in ((x, mean), (sq, meansq)):
            if max(opset, 15) >= 18:
                if not any(t.name == axes for t in graph.initializer):
                    graph.initializer.append(numpy_helper.from_array(np.array(reduce_axes, dtype=np.int64), axes))
                graph.node.append(onnx.helper.make_node("ReduceMean", [source, axes], [target], keepdims=0))
            else:
                graph.node.append(onnx.helper.make_node("ReduceMean", [source], [target], keepdims=0,
                                                        axes=reduce_axes))
        graph.output.extend([onnx.helper.make_tensor_value_info(mean, onnx.TensorProto.FLOAT, None),
                             onnx.helper.make_tensor_value_info(meansq, onnx.TensorProto.FLOAT, None)])
        names.append((mean, meansq))
    session = make_session(stats)
    input_names = [i.name for i in session.get_inputs()]
    sums = None
    count = 0
    for batch in data.batches(batch, True, 12345):
        values = session.run(None, {k: batch[k] for k in input_names})
        sums = values if sums is None else [a + b for a, b in zip(sums, values)]
        count += 1
        if count >= max_batches:
            break
    # Each norm has its own statistics tensors (io.load unties exporter-shared ones), held as an
    # initializer or, for placeholder weights, a Constant node: with_params writes either.
    measured = {}
    for index, node in enumerate(bns):
        mean = sums[2 * index] / count
        measured[node.input[3]] = mean
        measured[node.input[4]] = np.maximum(sums[2 * index + 1] / count - mean ** 2, 0)
    return with_params(model, measured)


# ---- evaluate ------------------------------------------------------------------------------------------

@dataclass
class Evaluation:
    examples: int
    loss: str
    accuracy: float | None = None
    top5: float | None = None
    mse: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def evaluate_model(model: onnx.ModelProto, data: Dataset, task: str = "ce", batch: int = 256) -> Evaluation:
    session = make_session(model)
    names = [i.name for i in session.get_inputs()]
    correct = correct5 = 0
    squared = 0.0
    n = len(data)
    for start in range(0, n, batch):
        feeds = {k: data.arrays[k][start:start + batch] for k in names}
        out = session.run(None, feeds)[0]
        labels = data.labels[start:start + batch]
        if task == "ce":
            correct += int(np.sum(np.argmax(out, axis=-1) == labels))
            top = np.argsort(-out, axis=-1)[:, :5]
            correct5 += int(np.sum(np.any(top == labels[:, None], axis=1)))
        else:
            squared += float(np.sum((out.reshape(labels.shape) - labels) ** 2))
    if task == "ce":
        return Evaluation(n, task, accuracy=correct / n, top5=correct5 / n)
    return Evaluation(n, task, mse=squared / max(n * int(np.prod(data.labels.shape[1:] or (1,))), 1))


def evaluate(model: str | os.PathLike | onnx.ModelProto, data: str | os.PathLike, loss: str = "ce",
             input_shapes: InputShapes | None = None, batch: int = 256) -> Evaluation:
    """Top-1 / top-5 accuracy (cross-entropy) or mse of a model on an .npz dataset.

    >>> evaluate("small.onnx", "val.npz").accuracy     # doctest: +SKIP
    0.862
    """
    loaded = load(model, input_shapes)
    dataset = load_data(data, None, loaded, loss)
    return evaluate_model(loaded.model, dataset, loss, batch)


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

    def to_dict(self) -> dict:
        return {
            "resource": self.resource, "cost_before": self.cost_before, "cost_after": self.cost_after,
            "flops_before": self.flops_before, "flops_after": self.flops_after,
            "params_before": self.params_before, "params_after": self.params_after,
            "validation": self.validation.to_dict() if self.validation else None,
            "session_accuracy": self.session_accuracy, "learning": self.learning, "decision": self.decision,
            "cut_validation": self.cut_validation.to_dict() if self.cut_validation else None,
            "steps": self.steps, "seconds": self.seconds, "notes": self.notes, "warnings": self.warnings,
        }


def _progress(options: TrainOptions, controller: BudgetController | None, label: str):
    """A rich progress bar showing loss, regularizer, cost vs budget and alive share."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[stats]}"), disable=not options.progress, transient=False)
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
        if options.progress:  # right away, above the bar; the result carries it for everyone else
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
          input_shapes: InputShapes | None = None) -> LearnResult:
    """Plain training (no regularizer): the baseline every MorphNet result is compared with."""
    options = options or TrainOptions()
    # Placeholder weights (ConstantOfShape) mean an untrained model: they start random.
    loaded, analysis = prepare(model, input_shapes, seed=options.seed)
    dataset = load_data(data, data_module, loaded, options.loss)
    val_set = load_data(val, None, loaded, options.loss) if val else None
    trainer = Trainer(loaded, options, target_shape=_target_shape(loaded, options))
    progress, on_step, on_warning = _progress(options, None, "train")
    with progress:
        result = trainer.run(dataset, on_step, val=val_set, on_warning=on_warning)
    trained = recalibrate_batchnorm(with_params(loaded.model, result.params), dataset, options.batch_size)
    verify_model(trained, f"the trained model {output or ''}".strip())
    costs = compute_costs(analysis, loaded)
    validation = evaluate_model(trained, val_set, options.loss) if val_set else None
    if output is not None:
        save_model(trained, Path(output), inputs=[loaded.path] if loaded.path else [])
    return LearnResult(trained, None, analysis, costs.flops, costs.flops, "flops", costs.flops, costs.flops,
                       costs.params, costs.params, validation, result.steps, result.seconds,
                       learning=result.signal.to_dict(), session_accuracy=result.session_accuracy,
                       warnings=_guard(result, validation, val_set))


def _target_shape(loaded: LoadedModel, options: TrainOptions) -> list[int] | None:
    if options.loss != "mse":
        return None
    shape = list(loaded.shapes[loaded.model.graph.output[0].name])
    shape[0] = options.batch_size
    return shape


def shrink(model, data=None, output=None, val=None, budget: Budget | None = None, strength: float | None = None,
           regularizer: str = "auto", threshold: float = 1e-2, hardware: str | None = None,
           options: TrainOptions | None = None, data_module: str | None = None, round_to: int = 1,
           keep: list[str] | None = None, input_shapes: InputShapes | None = None,
           structure_path=None, force: bool = False, finetune_steps: int | None = None,
           cost_batch_size: int = 1) -> LearnResult:
    """MorphNet: train with the resource-weighted regularizer, keep the channels worth their cost,
    fine-tune the smaller model briefly and write it.

    `finetune_steps`: steps of plain training of the pruned model (at FINETUNE_LR_SHARE of the
    learning rate, cosine), as every pruning tool ends; None: FINETUNE_SHARE of the training steps;
    0: none, the model is written as cut. `cost_batch_size`: the batch of the latency roofline
    (`hardware`), for `--budget-latency`.

    >>> shrink("resnet.onnx", "train.npz", "small.onnx", val="val.npz", budget=Budget("flops", "0.5x"))  # doctest: +SKIP

    A run whose training loss never fell decides nothing (MorphNetError) unless `force`: its gates
    say what the initialisation was, not which channels are worth their cost.
    """
    options = options or TrainOptions()
    if (budget is None) == (strength is None):
        raise MorphNetError("give either a budget (--budget-flops/--budget-size/--budget-latency) or --strength")
    if regularizer not in REGULARIZERS:
        raise MorphNetError(f"--regularizer {regularizer}: choose one of {', '.join(REGULARIZERS)}")
    hw = parse_hardware(hardware, cost_batch_size)
    loaded, analysis = prepare(model, input_shapes, keep, seed=options.seed)
    if not analysis.prunable_groups:
        raise MorphNetError(f"{loaded.name}: nothing to prune (no prunable channel group; see `inspect`)")
    resource = budget.resource if budget else "flops"
    full_costs = compute_costs(analysis, loaded, hw)
    full = resource_cost(full_costs, resource)
    target = budget.target(full) if budget else None
    if target is not None:
        floor = resource_cost(compute_costs(analysis, loaded, hw, alive=_floor_alive(loaded, analysis)), resource)
        if target < floor:
            raise MorphNetError(f"budget {budget.text} ({target:.4g}) is below what the unprunable part of the model "
                                f"costs ({floor:.4g} of {full:.4g} {resource}, every prunable group at its minimum); "
                                f"raise the budget")
        if target >= full:
            raise MorphNetError(f"budget {budget.text} is not below the model's cost ({full:.4g} {resource}); "
                                f"nothing to shrink")
    gates = None
    if regularizer == "figs":
        regs, gates = figs_regularizers(analysis, loaded)
        threshold = FIGS_THRESHOLD  # FiGS decides on the probability of a gate being on
    else:
        regs = group_regularizers(analysis, loaded, regularizer)
    if not regs:
        raise MorphNetError(f"{loaded.name}: no prunable group has a gate for the {regularizer} regularizer "
                            f"(a BatchNormalization scale, or filters held as weights rather than computed)")
    dataset = load_data(data, data_module, loaded, options.loss)
    val_set = load_data(val, None, loaded, options.loss) if val else None
    total_steps = options.steps or options.epochs * dataset.batches_per_epoch(options.batch_size)
    controller = BudgetController(analysis, loaded, regs, resource, target, strength, threshold, hw,
                                  total_steps=total_steps)
    trainer = Trainer(loaded, options, regs, controller, target_shape=_target_shape(loaded, options), gates=gates)
    progress, on_step, on_warning = _progress(options, controller, "shrink")
    with progress:
        result = trainer.run(dataset, on_step, val=val_set, on_warning=on_warning)
    if not result.signal.learned and not force:
        raise MorphNetError(f"{loaded.name}: not deciding a structure: {result.signal.describe()}, so the gates "
                            f"carry no information; {LIKELY_CAUSES} (--force decides anyway)")
    trained = recalibrate_batchnorm(with_params(loaded.model, result.params), dataset, options.batch_size)
    trained_loaded = LoadedModel(model=trained, path=loaded.path, shapes=loaded.shapes, dtypes=loaded.dtypes,
                                 upgraded_from=loaded.upgraded_from)
    decision = decide(analysis, trained_loaded, regs, result.params, threshold, resource, target, hw, round_to)
    surgery = apply_structure(trained_loaded, analysis, decision.structure, approximate_borders=True)
    verify_model(surgery.model, f"the shrunk model {output or ''}".strip())
    after_loaded = load(surgery.model, input_shapes)
    steps = finetune_steps if finetune_steps is not None else max(1, round(FINETUNE_SHARE * result.steps))
    cut_validation = None
    if steps:
        cut_validation = evaluate_model(surgery.model, val_set, options.loss) if val_set else None
        tuned = _finetune(after_loaded, dataset, val_set, options, steps)
        verify_model(tuned, f"the fine-tuned shrunk model {output or ''}".strip())
        after_loaded = load(tuned, input_shapes)
    written_model = after_loaded.model
    after_costs = compute_costs(analyze(after_loaded), after_loaded, hw)
    validation = evaluate_model(written_model, val_set, options.loss) if val_set else None
    if output is not None:
        save_model(written_model, Path(output), inputs=[loaded.path] if loaded.path else [])
    written_cost = resource_cost(after_costs, resource)
    record = dict(decision.to_dict(), written_cost=written_cost, finetune_steps=steps)
    if structure_path is not None:
        surgery.structure.save(structure_path, analysis, loaded.name, decision=record)
    warnings = _guard(result, validation, val_set, pruned=True)
    if decision.forced:
        warnings.insert(0, _forced_warning(decision, resource))
    return LearnResult(written_model, surgery.structure, analysis, full, written_cost, resource,
                       full_costs.flops, after_costs.flops, full_costs.params, after_costs.params, validation,
                       result.steps, result.seconds, controller.log, surgery.notes,
                       learning=result.signal.to_dict(), session_accuracy=result.session_accuracy,
                       warnings=warnings, decision=record, cut_validation=cut_validation)


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



def _floor_alive(loaded: LoadedModel, analysis: Analysis) -> np.ndarray:
    """Elements alive in the smallest valid structure: groups that can vanish do, the others keep
    one channel. What no budget can go below."""
    vanish = vanishable_groups(loaded, analysis)
    structure = Structure.full(analysis)
    for group in analysis.prunable_groups:
        structure.alive[group.id][:] = False
        if group.id not in vanish:
            structure.alive[group.id][0] = True
    return repair_structure(loaded, analysis, structure).element_alive(analysis)
