"""The training loop on onnxruntime-training: artifacts, a custom loss block (task loss + lambda x
MorphNet's regularizer), learning-rate schedule, budget-driven lambda, checkpoints and resume."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from ..errors import Interrupted, MorphNetError
from ..figs import NOISE, GatePlacement, insert_gates
from ..io import LoadedModel, write_atomic_bytes
from ..regularizers import GroupRegularizer, add_regularizer
from .data import Dataset
from .graph import TrainingGraph, training_graph
from .health import EARLY_CHECK_STEPS, LIKELY_CAUSES, MIN_JUDGED_STEPS, LearningSignal, learning_signal
from .ort import api, artifacts, onnxblock
from .probe import run_probe

COST_WEIGHTS = "morphnet_cost_weights"
TASK_LOSS = "morphnet_task_loss"
REG_VALUE = "morphnet_regularizer"
STATE_FILE = "state.json"  # in --checkpoint-dir: the step, the run and the name of the last checkpoint


OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
LOSSES = ("ce", "mse")


@dataclass
class TrainOptions:
    epochs: int = 15
    steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 64
    lr: float = 3e-3
    optimizer: str = "adamw"  # or "sgd"
    schedule: str = "onecycle"  # or "cosine", "constant"
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 0
    loss: str = "ce"  # or "mse"
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 500
    resume: bool = False
    progress: bool = True
    probe: bool = True  # one step in a child process first, so a native crash becomes an error

    def __post_init__(self) -> None:
        """The same one-line errors for Python callers as for the CLI (named by its options)."""
        for name in ("epochs", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MorphNetError(f"--{name.replace('_', '-')} {value}: must be a whole number, 1 or more")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise MorphNetError(f"--steps {self.steps}: must be a whole number, 1 or more")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise MorphNetError(f"--lr {self.lr}: must be above 0")
        if not isinstance(self.weight_decay, (int, float)) or not self.weight_decay >= 0:
            raise MorphNetError(f"--weight-decay {self.weight_decay}: must be 0 or more")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("loss", LOSSES)):
            if getattr(self, name) not in allowed:
                raise MorphNetError(f"--{name} {getattr(self, name)}: choose one of {', '.join(allowed)}")
        if self.resume and not self.checkpoint_dir:
            raise MorphNetError("--resume needs --checkpoint-dir")


@dataclass
class StepInfo:
    step: int
    total: int
    loss: float
    task: float
    reg: float
    lr: float


@dataclass
class TrainResult:
    params: dict[str, np.ndarray]
    steps: int
    seconds: float
    signal: LearningSignal
    history: list[dict] = field(default_factory=list)
    session_accuracy: float | None = None  # validation top-1 of the trained weights, inside the session
    warnings: list[str] = field(default_factory=list)


def learning_rate(options: TrainOptions, step: int, total: int) -> float:
    progress = step / max(total, 1)
    if options.schedule == "constant":
        return options.lr
    if options.schedule == "cosine":
        return options.lr * 0.5 * (1 + math.cos(math.pi * progress))
    # one-cycle: linear warm-up over 30% of training from lr/25, cosine down to lr/1e4
    warm = 0.3
    if progress < warm:
        return options.lr / 25 + (options.lr - options.lr / 25) * progress / warm
    return options.lr / 1e4 + (options.lr - options.lr / 1e4) * 0.5 * (1 + math.cos(math.pi * (progress - warm) / (1 - warm)))


def _logits_of(model: onnx.ModelProto) -> str:
    """The first output, or the input of a trailing Softmax/LogSoftmax (cross-entropy wants logits)."""
    output = model.graph.output[0].name
    for node in model.graph.node:
        if output in node.output and node.op_type in ("Softmax", "LogSoftmax"):
            return node.input[0]
    return output


class MorphNetLoss(onnxblock.Block):
    """task loss + sum(cost_weights * regularization vector): every term reduced to a scalar."""

    def __init__(self, task: str, batch: int, target_shape: list[int] | None, regs: list[GroupRegularizer]) -> None:
        super().__init__()
        self.task = task
        self.batch = batch
        self.target_shape = target_shape
        self.regs = regs

    def build(self, *output_names):
        graph = self.base.graph
        logits = _logits_of(self.base) if self.task == "ce" else output_names[0]

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
        if not self.regs:
            loss = add("Identity", [TASK_LOSS], "morphnet_loss")
        else:
            vector = add_regularizer(graph, self.regs)
            width = sum(r.width for r in self.regs)
            graph.input.append(helper.make_tensor_value_info(COST_WEIGHTS, onnx.TensorProto.FLOAT, [width]))
            weighted = add("Mul", [vector, COST_WEIGHTS], "morphnet/weighted")
            add("ReduceSum", [weighted], REG_VALUE, keepdims=0)
            loss = add("Add", [TASK_LOSS, REG_VALUE], "morphnet_loss")
        graph.output.append(helper.make_tensor_value_info(loss, onnx.TensorProto.FLOAT, []))
        return loss


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


def build_artifacts(tg: TrainingGraph, directory: Path, options: TrainOptions, regs: list[GroupRegularizer],
                    target_shape: list[int] | None) -> list[str]:
    """Write the training, eval and optimizer graphs; return the names of their outputs after the loss."""
    optimizer = (onnxblock.optim.AdamW(weight_decay=options.weight_decay) if options.optimizer == "adamw"
                 else onnxblock.optim.SGD())
    loss = MorphNetLoss(options.loss, options.batch_size, target_shape, regs)
    # The logits come out too: training accuracy per step, and validation inside the session.
    extra = [TASK_LOSS] + ([REG_VALUE] if regs else []) + ([_logits_of(tg.model)] if options.loss == "ce" else [])
    cwd = os.getcwd()
    os.chdir(directory)  # onnxblock writes temp files in the working directory
    try:
        with _quiet_native_output():
            artifacts.generate_artifacts(tg.model, requires_grad=tg.trainable, frozen_params=tg.frozen, loss=loss,
                                         optimizer=optimizer, artifact_directory=str(directory),
                                         additional_output_names=extra)
    except Exception as exc:
        raise MorphNetError(f"onnxruntime-training cannot build the training graph: "
                            f"{str(exc).strip().splitlines()[-1][:300]}") from exc
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


Controller = Callable[[int, dict[str, np.ndarray]], np.ndarray]


class Trainer:
    """One training run. `controller(step, params)` returns the cost weights to feed (or None)."""

    def __init__(self, loaded: LoadedModel, options: TrainOptions, regs: list[GroupRegularizer] | None = None,
                 controller=None, target_shape: list[int] | None = None,
                 gates: list[GatePlacement] | None = None) -> None:
        self.loaded = loaded
        self.options = options
        self.regs = regs or []
        self.controller = controller
        self.target_shape = target_shape
        self.gates = gates or []  # FiGS: where the stochastic gates multiply the channels
        self.noise = np.random.default_rng(options.seed + 1_000_003)

    def _gate_noise(self, deterministic: bool = False) -> np.ndarray:
        """Uniform noise for the FiGS samples; 0.5 (no noise) when scoring."""
        width = sum(r.width for r in self.regs)
        if deterministic:
            return np.full(width, 0.5, dtype=np.float32)
        return self.noise.uniform(1e-6, 1 - 1e-6, width).astype(np.float32)

    def run(self, data: Dataset, on_step: Callable[[StepInfo], None] | None = None, val: Dataset | None = None,
            on_warning: Callable[[str], None] | None = None) -> TrainResult:
        """Train; `val` is also scored inside the session (batch statistics, as trained); `on_warning`
        hears the early learning check (after the first epoch or EARLY_CHECK_STEPS steps)."""
        options = self.options
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
        per_epoch = data.require_batches(options.batch_size)
        total = options.steps if options.steps else options.epochs * per_epoch
        tg = training_graph(self.loaded, options.batch_size)
        if self.gates:
            before = {t.name for t in tg.model.graph.initializer}
            logits = insert_gates(tg.model, self.regs, self.gates)
            tg.trainable.extend(logits)
            tg.frozen.extend(t.name for t in tg.model.graph.initializer if t.name not in before and t.name not in logits)
        work = Path(tempfile.mkdtemp(prefix="morphnet-train-"))
        start_step, meta = 0, None
        try:
            extra = build_artifacts(tg, work, options, self.regs, self.target_shape)
            logits_at = len(extra) if options.loss == "ce" else None  # outputs: loss, *extra
            if options.probe:
                first = next(data.batches(options.batch_size, False, 0))
                if self.regs:
                    first[COST_WEIGHTS] = np.zeros(sum(r.width for r in self.regs), dtype=np.float32)
                if self.gates:
                    first[NOISE] = self._gate_noise(deterministic=True)
                run_probe(work, [first[name] for name in _input_order(work, tg)], self.loaded.name)
            checkpoint = work / "checkpoint"
            fingerprint = self._fingerprint(data, total)
            meta = self._resume_meta(fingerprint) if options.resume else None
            if meta is not None:
                checkpoint = options.checkpoint_dir / meta["checkpoint"]
                start_step = int(meta["step"])
                if self.controller is not None:
                    self.controller.load_state(meta["controller"])
                self.noise.bit_generator.state = meta["noise"]
            state = api.CheckpointState.load_checkpoint(str(checkpoint))
            session_options = onnxruntime.SessionOptions()
            session_options.log_severity_level = 3
            if options.threads:
                session_options.intra_op_num_threads = options.threads
            module = api.Module(str(work / "training_model.onnx"), state, str(work / "eval_model.onnx"),
                                session_options=session_options)
            optimizer = api.Optimizer(str(work / "optimizer_model.onnx"), module)
            input_names = module.input_names()
            module.train()
            started = time.perf_counter()
            step = start_step
            # What the steps before a resume measured comes back with them: the resumed run ends with
            # the same cost weights, learning signal, history and warnings as one never interrupted.
            history: list[dict] = list(meta["history"]) if meta else []
            weights = np.array(meta["weights"], dtype=np.float32) if meta and meta["weights"] is not None else None
            task_losses: list[float] = list(meta["task_losses"]) if meta else []
            correct: list[float] = list(meta["correct"]) if meta else []
            warnings: list[str] = list(meta["warnings"]) if meta else []
            early_at = max(MIN_JUDGED_STEPS, min(per_epoch, EARLY_CHECK_STEPS))
            classes = self._declared_classes()
            try:
                while step < total:
                    epoch, offset = divmod(step, per_epoch)
                    for batch in data.batches(options.batch_size, True, options.seed + epoch, skip=offset):
                        if step >= total:
                            break
                        if self.regs:
                            update = (self.controller(step, lambda: self.read_params(state), force=weights is None)
                                      if self.controller else None)
                            if update is not None:
                                weights = update
                            batch[COST_WEIGHTS] = weights
                        if self.gates:
                            batch[NOISE] = self._gate_noise()
                        lr = learning_rate(options, step, total)
                        optimizer.set_learning_rate(lr)
                        outputs = module(*[batch[name] for name in input_names])
                        loss = float(outputs[0])
                        if not np.isfinite(loss):
                            raise MorphNetError(
                                f"the loss became {loss} at step {step}: lower --lr (now {options.lr})"
                                + (f"; the last good checkpoint is in {options.checkpoint_dir}" if options.checkpoint_dir
                                   and (options.checkpoint_dir / STATE_FILE).exists() else ""))
                        optimizer.step()
                        module.lazy_reset_grad()
                        step += 1
                        info = StepInfo(step, total, loss, float(outputs[1]), float(outputs[2]) if self.regs else 0.0, lr)
                        task_losses.append(info.task)
                        if logits_at is not None:
                            correct.append(float(np.mean(np.argmax(outputs[logits_at], axis=-1) == batch["labels"])))
                        if step == early_at and early_at < total:
                            early = learning_signal(task_losses, correct, classes)
                            if not early.learned:
                                warnings.append(f"after {step} steps {early.describe()}: not learning yet; "
                                                f"{LIKELY_CAUSES}")
                                if on_warning:
                                    on_warning(warnings[-1])
                        if step % 50 == 0 or step == total:
                            history.append(info.__dict__)
                        if on_step:
                            on_step(info)
                        if options.checkpoint_dir and (step % options.checkpoint_every == 0 or step == total):
                            self._save(state, options.checkpoint_dir, {
                                "step": step, "run": fingerprint, "weights": None if weights is None else weights.tolist(),
                                "controller": self.controller.state() if self.controller else {},
                                "noise": self.noise.bit_generator.state, "task_losses": task_losses,
                                "correct": correct, "history": history, "warnings": warnings})
            except KeyboardInterrupt as exc:
                raise Interrupted(self._interrupted(step, total)) from exc
            seconds = time.perf_counter() - started
            trained = self.read_params(state, tg.trainable)
            for copy in tg.copies:  # untied copies: the first one's value goes back
                trained.pop(copy, None)
            session_accuracy = None
            if val is not None and logits_at is not None:
                module.eval()
                session_accuracy = self._session_accuracy(module, val, weights, logits_at)
            return TrainResult(params=trained, steps=step, seconds=seconds,
                               signal=learning_signal(task_losses, correct, classes), history=history,
                               session_accuracy=session_accuracy, warnings=warnings)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _declared_classes(self) -> int | None:
        if self.options.loss != "ce":
            return None
        shape = self.loaded.shapes.get(_logits_of(self.loaded.model))
        return int(shape[-1]) if shape and shape[-1] > 0 else None

    def _session_accuracy(self, module, val: Dataset, weights, logits_at: int) -> float | None:
        """Top-1 of the trained weights on `val`, in the session's eval graph: every example once; the
        last batch is filled up from the start (the graph's batch is static) and the filler not counted."""
        batch_size = self.options.batch_size
        n = len(val)
        if n == 0:
            return None
        hits = 0
        names = module.input_names()
        for start in range(0, n, batch_size):
            index = np.arange(start, start + batch_size) % n
            feeds = {k: v[index] for k, v in val.arrays.items()}
            feeds["labels"] = val.labels[index]
            if self.regs:
                feeds[COST_WEIGHTS] = weights if weights is not None else np.zeros(
                    sum(r.width for r in self.regs), dtype=np.float32)
            if self.gates:
                feeds[NOISE] = self._gate_noise(deterministic=True)
            logits = module(*[feeds[name] for name in names])[logits_at]
            real = min(batch_size, n - start)
            hits += int(np.sum(np.argmax(logits[:real], axis=-1) == feeds["labels"][:real]))
        return hits / n

    def read_params(self, state, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Current values of the regularized parameters (or of `names`) in an onnxruntime-training
        CheckpointState: what a controller's `get_params` returns."""
        if names is None:
            names = sorted({m.param for r in self.regs for m in r.members})
        return {name: np.array(state.parameters[name].data) for name in names}

    def _fingerprint(self, data: Dataset, total: int) -> dict:
        """What makes a run the same run: a checkpoint resumes only the run that wrote it."""
        o = self.options
        return {"model": self.loaded.name, "examples": len(data), "total_steps": total, "batch_size": o.batch_size,
                "lr": o.lr, "optimizer": o.optimizer, "schedule": o.schedule, "weight_decay": o.weight_decay,
                "seed": o.seed, "loss": o.loss, "regularized": sum(r.width for r in self.regs),
                "gates": len(self.gates)}

    def _resume_meta(self, fingerprint: dict) -> dict | None:
        """The last checkpoint's record in --checkpoint-dir, or None when there is none yet (a run killed
        before its first checkpoint starts over)."""
        directory = self.options.checkpoint_dir
        path = directory / STATE_FILE
        if not path.exists():
            return None
        try:
            meta = json.loads(path.read_text())
            checkpoint = directory / meta["checkpoint"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MorphNetError(f"{path}: not a checkpoint record of this version ({exc}); remove {directory} "
                                f"to start over") from exc
        if meta.get("run") != fingerprint:
            changed = sorted(k for k in fingerprint if meta.get("run", {}).get(k) != fingerprint[k])
            raise MorphNetError(f"{directory}: the checkpoint is of another run ({', '.join(changed)} differ); "
                                f"resume with the settings it was started with, or choose another --checkpoint-dir")
        if not checkpoint.exists():
            raise MorphNetError(f"{path}: names {checkpoint.name}, which is missing; remove {directory} to start over")
        return meta

    def _interrupted(self, step: int, total: int) -> str:
        """Where the run stopped, where its last checkpoint is and how to continue."""
        directory = self.options.checkpoint_dir
        text = f"interrupted at step {step} of {total}"
        saved = None
        if directory is not None and (directory / STATE_FILE).exists():
            try:
                saved = json.loads((directory / STATE_FILE).read_text())["step"]
            except (OSError, ValueError, KeyError):
                saved = None
        if saved is None:
            return text + (f"; no checkpoint yet in {directory} (one every {self.options.checkpoint_every} steps)"
                           if directory is not None else "; no checkpoint (--checkpoint-dir DIR keeps one)")
        return (text + f"; the checkpoint of step {saved} is in {directory}: run the same command with --resume "
                f"to continue from it")

    def _save(self, state, directory: Path, meta: dict) -> None:
        """A checkpoint under a name of its own, then the record naming it, replaced atomically: a kill
        at any moment leaves the previous pair or the new one, never half of either."""
        directory.mkdir(parents=True, exist_ok=True)
        name = f"checkpoint-{meta['step']:08d}"
        api.CheckpointState.save_checkpoint(state, str(directory / name), include_optimizer_state=True)
        write_atomic_bytes(directory / STATE_FILE, json.dumps(dict(meta, checkpoint=name)))
        for old in directory.glob("checkpoint-*"):  # earlier checkpoints (and any data files beside them)
            if not old.name.startswith(name):
                old.unlink(missing_ok=True)
