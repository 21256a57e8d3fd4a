"""The `ort` backend: onnxruntime-training's on-device API (artifacts, a custom loss block with task
loss + MorphNet's regularizer as an ONNX subgraph, its optimizer graph and checkpoint state)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..errors import MorphNetError, native_reason
from ..loading.model import LoadedModel
from ..method.figs import GatePlacement, insert_gates
from ..method.regularizers import GroupRegularizer, add_regularizer
from .backend import COST_WEIGHTS, TEACHER, Distill, StepOutput, logits_of
from .graph import TrainingGraph, training_graph
from .ort import api, artifacts, onnxblock, onnxruntime
from .probe import run_probe

TASK_LOSS = "morphnet_task_loss"
REG_VALUE = "morphnet_regularizer"


class MorphNetLoss(onnxblock.Block):
    """task loss + sum(cost_weights * regularization vector): every term reduced to a scalar."""

    def __init__(self, task: str, batch: int, target_shape: list[int] | None, regs: list[GroupRegularizer],
                 distill: Distill | None = None, classes: int | None = None) -> None:
        super().__init__()
        self.task = task
        self.batch = batch
        self.target_shape = target_shape
        self.regs = regs
        self.distill = distill
        self.classes = classes

    def build(self, *output_names):
        graph = self.base.graph
        logits = logits_of(self.base) if self.task == "ce" else output_names[0]

        def add(op, inputs, out, **attrs):
            graph.node.append(helper.make_node(op, inputs, [out], name=out, **attrs))
            return out

        if self.task == "ce":
            graph.input.append(helper.make_tensor_value_info("labels", onnx.TensorProto.INT64, [self.batch]))
            # The gradient of SoftmaxCrossEntropyLoss reads its second output (log-probabilities).
            graph.node.append(helper.make_node("SoftmaxCrossEntropyLoss", [logits, "labels"],
                                               [TASK_LOSS, "morphnet/log_prob"], name=TASK_LOSS, reduction="mean"))
        else:
            graph.input.append(helper.make_tensor_value_info("labels", onnx.TensorProto.FLOAT, self.target_shape))
            diff = add("Sub", [output_names[0], "labels"], "morphnet/diff")
            add("ReduceMean", [add("Mul", [diff, diff], "morphnet/sq")], TASK_LOSS, keepdims=0)
        objective = TASK_LOSS
        if self.distill is not None and self.task == "ce":
            # (1 - w) CE + w T^2 H(teacher, softmax(logits / T)): the teacher's probabilities are fed
            d = self.distill
            graph.input.append(helper.make_tensor_value_info(TEACHER, onnx.TensorProto.FLOAT,
                                                             [self.batch, self.classes]))
            for name, value in (("morphnet/kd_t", d.temperature), ("morphnet/kd_scale", d.weight * d.temperature ** 2),
                                ("morphnet/kd_keep", 1.0 - d.weight)):
                graph.initializer.append(helper.make_tensor(name, onnx.TensorProto.FLOAT, [], [value]))
            log_q = add("LogSoftmax", [add("Div", [logits, "morphnet/kd_t"], "morphnet/kd_soft")], "morphnet/kd_logq",
                        axis=-1)
            cross = add("ReduceSum", [add("Mul", [TEACHER, log_q], "morphnet/kd_plogq")], "morphnet/kd_sum",
                        keepdims=0, axes=[-1]) if self._opset() < 13 else add(
                "ReduceSum", [add("Mul", [TEACHER, log_q], "morphnet/kd_plogq"), self._axes(graph)],
                "morphnet/kd_sum", keepdims=0)
            kd = add("Neg", [add("ReduceMean", [cross], "morphnet/kd_mean", keepdims=0)], "morphnet/kd")
            objective = add("Add", [add("Mul", [TASK_LOSS, "morphnet/kd_keep"], "morphnet/kd_task"),
                                    add("Mul", [kd, "morphnet/kd_scale"], "morphnet/kd_term")], "morphnet/objective")
        if not self.regs:
            loss = add("Identity", [objective], "morphnet_loss")
        else:
            vector = add_regularizer(graph, self.regs)
            width = sum(r.width for r in self.regs)
            graph.input.append(helper.make_tensor_value_info(COST_WEIGHTS, onnx.TensorProto.FLOAT, [width]))
            weighted = add("Mul", [vector, COST_WEIGHTS], "morphnet/weighted")
            add("ReduceSum", [weighted], REG_VALUE, keepdims=0)
            loss = add("Add", [objective, REG_VALUE], "morphnet_loss")
        graph.output.append(helper.make_tensor_value_info(loss, onnx.TensorProto.FLOAT, []))
        return loss

    def _opset(self) -> int:
        return next((o.version for o in self.base.opset_import if o.domain in ("", "ai.onnx")), 13)

    @staticmethod
    def _axes(graph) -> str:
        name = "morphnet/kd_axes"
        if not any(t.name == name for t in graph.initializer):
            graph.initializer.append(helper.make_tensor(name, onnx.TensorProto.INT64, [1], [-1]))
        return name


@contextlib.contextmanager
def _quiet_native_output():
    """generate_artifacts logs every graph transformation on the process's stderr: hide it."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def build_artifacts(tg: TrainingGraph, directory: Path, options, regs: list[GroupRegularizer],
                    target_shape: list[int] | None, distill: Distill | None = None,
                    classes: int | None = None) -> list[str]:
    """Write the training, eval and optimizer graphs; return the names of their outputs after the loss."""
    optimizer = (onnxblock.optim.AdamW(weight_decay=options.weight_decay) if options.optimizer == "adamw"
                 else onnxblock.optim.SGD())
    loss = MorphNetLoss(options.loss, options.batch_size, target_shape, regs, distill, classes)
    # The logits come out too: training accuracy per step, and validation inside the session.
    extra = [TASK_LOSS] + ([REG_VALUE] if regs else []) + ([logits_of(tg.model)] if options.loss == "ce" else [])
    cwd = os.getcwd()
    os.chdir(directory)  # onnxblock writes temp files in the working directory
    try:
        with _quiet_native_output():
            artifacts.generate_artifacts(tg.model, requires_grad=tg.trainable, frozen_params=tg.frozen, loss=loss,
                                         optimizer=optimizer, artifact_directory=str(directory),
                                         additional_output_names=extra)
    except Exception as exc:
        raise MorphNetError(f"onnxruntime-training cannot build the training graph: {native_reason(exc)}") from exc
    finally:
        os.chdir(cwd)
    # The eval graph normalises with the running statistics, which onnxruntime-training never updates
    # (they are re-measured after training): it must use batch statistics, as training does, to score
    # the trained weights (its three outputs stay: training mode requires them; nothing reads two).
    eval_path = directory / "eval_model.onnx"
    model = onnx.load(str(eval_path))
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            for a in list(node.attribute):
                if a.name == "training_mode":
                    node.attribute.remove(a)
            node.attribute.append(helper.make_attribute("training_mode", 1))
    onnx.save(model, str(eval_path))
    return extra


def _input_order(work: Path, tg: TrainingGraph) -> list[str]:
    """The training graph's data inputs (parameters are graph inputs too), in the Module's order."""
    model = onnx.load(str(work / "training_model.onnx"), load_external_data=False)
    params = {t.name for t in model.graph.initializer} | set(tg.trainable) | set(tg.frozen)
    return [i.name for i in model.graph.input if i.name not in params and not i.name.endswith("_grad.accumulation.buffer")
            and i.name != "lazy_reset_grad"]


class OrtSession:
    """Artifacts in a temporary folder, a Module and its Optimizer; `probe_batch` is first run in a
    child process so that a native crash becomes a one-line error."""

    def __init__(self, loaded: LoadedModel, options, regs: list[GroupRegularizer], gates: list[GatePlacement],
                 target_shape: list[int] | None, probe_batch: dict[str, np.ndarray] | None,
                 resume_from: Path | None, distill: Distill | None = None, classes: int | None = None) -> None:
        onnxruntime.set_default_logger_severity(3)
        self.regs = regs
        tg = training_graph(loaded, options.batch_size)
        if gates:
            before = {t.name for t in tg.model.graph.initializer}
            logits = insert_gates(tg.model, regs, gates)
            tg.trainable.extend(logits)
            tg.frozen.extend(t.name for t in tg.model.graph.initializer if t.name not in before and t.name not in logits)
        self.tg = tg
        self.work = Path(tempfile.mkdtemp(prefix="morphnet-train-"))
        try:
            extra = build_artifacts(tg, self.work, options, regs, target_shape, distill, classes)
            self.logits_at = len(extra) if options.loss == "ce" else None  # outputs: loss, *extra
            if probe_batch is not None:
                run_probe(self.work, [probe_batch[name] for name in _input_order(self.work, tg)], loaded.name)
            checkpoint = resume_from if resume_from is not None else self.work / "checkpoint"
            self.state = api.CheckpointState.load_checkpoint(str(checkpoint))
            session_options = onnxruntime.SessionOptions()
            session_options.log_severity_level = 3
            if options.threads:
                session_options.intra_op_num_threads = options.threads
            # The CUDA build of onnxruntime-training (the `gpu` extra) trains on the GPU.
            device = "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
            self.module = api.Module(str(self.work / "training_model.onnx"), self.state,
                                     str(self.work / "eval_model.onnx"), device=device,
                                     session_options=session_options)
            self.optimizer = api.Optimizer(str(self.work / "optimizer_model.onnx"), self.module)
            self.input_names = self.module.input_names()
            self.module.train()
        except BaseException:
            self.close()
            raise

    def step(self, batch: dict[str, np.ndarray], lr: float) -> StepOutput:
        self.optimizer.set_learning_rate(lr)
        outputs = self.module(*[batch[name] for name in self.input_names])
        loss = float(outputs[0])
        result = StepOutput(loss, float(outputs[1]), float(outputs[2]) if self.regs else 0.0,
                            outputs[self.logits_at] if self.logits_at is not None else None)
        if np.isfinite(loss):
            self.optimizer.step()
            self.module.lazy_reset_grad()
        return result

    def params(self, names: list[str]) -> dict[str, np.ndarray]:
        trained = {name: np.array(self.state.parameters[name].data) for name in names if name not in self.tg.copies}
        return trained

    def trainable(self) -> list[str]:
        """The trained initializers to write back (untied copies left out: the first one's value goes back)."""
        return [name for name in self.tg.trainable if name not in self.tg.copies]

    def eval_logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.module.eval()
        return self.module(*[feeds[name] for name in self.module.input_names()])[self.logits_at]

    def set_params(self, values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            value = np.ascontiguousarray(value, dtype=np.float32)
            for target in [name] + [copy for copy, original in self.tg.copies.items() if original == name]:
                self.state.parameters[target].data = value

    def save(self, path: Path) -> None:
        api.CheckpointState.save_checkpoint(self.state, str(path), include_optimizer_state=True)

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
