"""The training loop, shared by every backend (backend.py): data order, learning-rate schedule,
budget-driven lambda, the learning guard, checkpoints and resume. The backend (onnxruntime-training
by default, torch with `backend="torch"`) takes the steps and returns the trained initializers."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import Interrupted, MorphNetError
from ..loading.model import LoadedModel
from ..loading.writing import write_atomic_bytes
from ..method.figs import NOISE, GatePlacement
from ..method.regularizers import GroupRegularizer
from ..stopping import raise_if_stop_requested
from .backend import BACKENDS, COST_WEIGHTS, STATE_FILE, TEACHER, Distill, Session, logits_of, torch_session_class
from .dataset import Dataset
from .distributed import World, current_world
from .health import EARLY_CHECK_STEPS, LIKELY_CAUSES, MIN_JUDGED_STEPS, LearningSignal, learning_signal
from .images import ImageOptions
from .ort_backend import OrtSession

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
    probe: bool = True  # ort: one step in a child process first, so a native crash becomes an error
    backend: str = "ort"  # or "torch" (the optional extra `torch`; data-parallel under torchrun)
    images: ImageOptions = field(default_factory=ImageOptions)  # how image folders are read (images.py)
    restarts: tuple[int, ...] = ()  # steps where the schedule starts again (a shrink family's phases)

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
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("loss", LOSSES),
                              ("backend", BACKENDS)):
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
    snapshots: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # trained weights at asked steps


def logits_width(loaded: LoadedModel) -> int:
    """The class count the logits declare (0 when unknown)."""
    shape = loaded.shapes.get(logits_of(loaded.model))
    return int(shape[-1]) if shape and shape[-1] and shape[-1] > 0 else 0


def learning_rate(options: TrainOptions, step: int, total: int) -> float:
    """The schedule's rate at `step` of `total`; with `restarts`, the schedule runs again over each
    span between two of them (warm restarts)."""
    starts = [0] + [r for r in sorted(options.restarts) if 0 < r < total]
    start = max(s for s in starts if s <= step)
    ends = [s for s in starts if s > step] + [total]
    step, total = step - start, min(ends) - start
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




Controller = Callable[[int, dict[str, np.ndarray]], np.ndarray]


class Trainer:
    """One training run. `controller(step, get_params, force)` returns the cost weights to feed (or None).

    The loop is the same for every backend; under torchrun (`options.backend == "torch"`) every rank
    runs it on the same global batches, the backend trains on the rank's share of each, and only rank
    0 writes checkpoints."""

    def __init__(self, loaded: LoadedModel, options: TrainOptions, regs: list[GroupRegularizer] | None = None,
                 controller=None, target_shape: list[int] | None = None,
                 gates: list[GatePlacement] | None = None, distill: Distill | None = None,
                 schedule: tuple[int, int] | None = None, hooks=None) -> None:
        """`distill`: the loss also matches the teacher's probabilities, which the dataset holds under
        TEACHER. `schedule` (offset, total): the learning rate of step s is that of step offset + s of a
        run of `total` steps (a run that continues another's schedule). `hooks`: an object with
        `start(session, step)` (once the session is open), `stop() -> bool` (asked before every step: end
        the run there) and `after_step(session, step, lr)` (after every optimizer step: what shrink uses
        to hold removed channels at zero and to take the regularizer's proximal steps)."""
        self.loaded = loaded
        self.options = options
        self.regs = regs or []
        self.controller = controller
        self.target_shape = target_shape
        self.gates = gates or []  # FiGS: where the stochastic gates multiply the channels
        self.distill = distill
        self.schedule = schedule
        self.hooks = hooks
        self.noise = np.random.default_rng(options.seed + 1_000_003)

    def _gate_noise(self, deterministic: bool = False) -> np.ndarray:
        """Uniform noise for the FiGS samples; 0.5 (no noise) when scoring."""
        width = sum(r.width for r in self.regs)
        if deterministic:
            return np.full(width, 0.5, dtype=np.float32)
        return self.noise.uniform(1e-6, 1 - 1e-6, width).astype(np.float32)

    def _open(self, data: Dataset, world: World, resume_from: Path | None) -> Session:
        options = self.options
        if options.backend == "torch":
            return torch_session_class()(self.loaded, options, self.regs, self.gates, self.target_shape, world,
                                         resume_from, self.distill)
        if world.distributed:
            raise MorphNetError(f"--backend ort trains in one process on one device, but this is rank {world.rank} "
                                f"of {world.size} (torchrun): add --backend torch for data-parallel training")
        probe = None
        if options.probe:
            probe = next(data.batches(options.batch_size, False, 0))
            if self.regs:
                probe[COST_WEIGHTS] = np.zeros(sum(r.width for r in self.regs), dtype=np.float32)
            if self.gates:
                probe[NOISE] = self._gate_noise(deterministic=True)
        return OrtSession(self.loaded, options, self.regs, self.gates, self.target_shape, probe, resume_from,
                          self.distill, self._declared_classes())

    def run(self, data: Dataset, on_step: Callable[[StepInfo], None] | None = None, val: Dataset | None = None,
            on_warning: Callable[[str], None] | None = None, snapshots: frozenset[int] = frozenset(),
            judge_until: int | None = None) -> TrainResult:
        """Train; `val` is also scored inside the session (batch statistics, as trained); `on_warning`
        hears the early learning check (after the first epoch or EARLY_CHECK_STEPS steps); the
        trained weights after each step in `snapshots` come back in `TrainResult.snapshots` (a family
        of shrinks decides one member from each; not kept across a resume); the learning signal
        judges the first `judge_until` steps (all without)."""
        options = self.options
        world = current_world()
        shard = world if world.distributed else None  # each rank reads only its rows of a global batch
        per_epoch = data.require_batches(options.batch_size)
        total = options.steps if options.steps else options.epochs * per_epoch
        start_step, resume_from = 0, None
        fingerprint = self._fingerprint(data, total)
        meta = self._resume_meta(fingerprint) if options.resume else None
        if meta is not None:
            resume_from = options.checkpoint_dir / meta["checkpoint"]
            start_step = int(meta["step"])
            if self.controller is not None:
                self.controller.load_state(meta["controller"])
            self.noise.bit_generator.state = meta["noise"]
        session = self._open(data, world, resume_from)
        try:
            if self.hooks is not None:
                self.hooks.start(session, start_step)
            reg_names = sorted({m.param for r in self.regs for m in r.members})
            started = time.perf_counter()
            step = start_step
            # What the steps before a resume measured comes back with them: the resumed run ends with
            # the same cost weights, learning signal, history and warnings as one never interrupted.
            history: list[dict] = list(meta["history"]) if meta else []
            weights = np.array(meta["weights"], dtype=np.float32) if meta and meta["weights"] is not None else None
            task_losses: list[float] = list(meta["task_losses"]) if meta else []
            correct: list[float] = list(meta["correct"]) if meta else []
            warnings: list[str] = list(meta["warnings"]) if meta else []
            taken: dict[int, dict[str, np.ndarray]] = {}
            early_at = max(MIN_JUDGED_STEPS, min(per_epoch, EARLY_CHECK_STEPS))
            classes = self._declared_classes()
            try:
                stopped = False
                while step < total and not stopped:
                    epoch, offset = divmod(step, per_epoch)
                    for batch in data.batches(options.batch_size, True, options.seed + epoch, skip=offset,
                                              shard=shard):
                        if step >= total:
                            break
                        raise_if_stop_requested()  # a signal whose own raise a finalizer swallowed
                        if self.hooks is not None and self.hooks.stop():
                            stopped = True
                            break
                        if self.regs:
                            update = (self.controller(step, lambda: session.params(reg_names), force=weights is None)
                                      if self.controller else None)
                            if update is not None:
                                weights = update
                            batch[COST_WEIGHTS] = weights
                        if self.gates:
                            batch[NOISE] = self._gate_noise()
                        lr = (learning_rate(options, self.schedule[0] + step, self.schedule[1]) if self.schedule
                              else learning_rate(options, step, total))
                        out = session.step(batch, lr)
                        if not np.isfinite(out.loss):
                            raise MorphNetError(
                                f"the loss became {out.loss} at step {step}: lower --lr (now {options.lr})"
                                + (f"; the last good checkpoint is in {options.checkpoint_dir}" if options.checkpoint_dir
                                   and (options.checkpoint_dir / STATE_FILE).exists() else ""))
                        step += 1
                        if self.hooks is not None:
                            self.hooks.after_step(session, step, lr)
                        info = StepInfo(step, total, out.loss, out.task, out.reg, lr)
                        task_losses.append(info.task)
                        if out.logits is not None:
                            correct.append(float(np.mean(np.argmax(out.logits, axis=-1) == batch["labels"])))
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
                        if step in snapshots:
                            taken[step] = session.params(session.trainable())
                        ending = step == total or (self.hooks is not None and self.hooks.stop())
                        if options.checkpoint_dir and (step % options.checkpoint_every == 0 or ending) \
                                and world.main:
                            self._save(session, options.checkpoint_dir, {
                            "step": step, "run": fingerprint, "weights": None if weights is None else weights.tolist(),
                            "controller": self.controller.state() if self.controller else {},
                            "noise": self.noise.bit_generator.state, "task_losses": task_losses,
                            "correct": correct, "history": history, "warnings": warnings})
            except KeyboardInterrupt as exc:
                raise Interrupted(self._interrupted(step, total)) from exc
            seconds = time.perf_counter() - started
            trained = session.params(session.trainable())
            session_accuracy = None
            if val is not None and options.loss == "ce":
                session_accuracy = self._session_accuracy(session, val, weights, shard)
            return TrainResult(params=trained, steps=step, seconds=seconds,
                               signal=learning_signal(task_losses[:judge_until], correct[:judge_until], classes),
                               history=history,
                               session_accuracy=session_accuracy, warnings=warnings, snapshots=taken)
        finally:
            session.close()

    def _declared_classes(self) -> int | None:
        if self.options.loss != "ce":
            return None
        width = logits_width(self.loaded)
        return width if width > 0 else None

    def _session_accuracy(self, session: Session, val: Dataset, weights, shard: World | None) -> float | None:
        """Top-1 of the trained weights on `val`, in the session (batch statistics): every example once;
        the last batch is filled up from the start (the graph's batch is static) and the filler not counted."""
        batch_size = self.options.batch_size
        n = len(val)
        if n == 0:
            return None
        hits = 0
        for start, feeds in zip(range(0, n, batch_size), val.batches(batch_size, False, 0, shard=shard, fill_last=True)):
            if self.regs:
                feeds[COST_WEIGHTS] = weights if weights is not None else np.zeros(
                    sum(r.width for r in self.regs), dtype=np.float32)
            if self.gates:
                feeds[NOISE] = self._gate_noise(deterministic=True)
            if self.distill is not None and self.options.loss == "ce":  # the loss needs it; the logits do not
                feeds[TEACHER] = np.zeros((batch_size, logits_width(self.loaded)), dtype=np.float32)
            logits = session.eval_logits(feeds)
            real = min(batch_size, n - start)
            hits += int(np.sum(np.argmax(logits[:real], axis=-1) == feeds["labels"][:real]))
        return hits / n

    def _fingerprint(self, data: Dataset, total: int) -> dict:
        """What makes a run the same run: a checkpoint resumes only the run that wrote it."""
        o = self.options
        run = {"model": self.loaded.name, "examples": len(data), "total_steps": total, "batch_size": o.batch_size,
                "lr": o.lr, "optimizer": o.optimizer, "schedule": o.schedule, "weight_decay": o.weight_decay,
                "seed": o.seed, "loss": o.loss, "regularized": sum(r.width for r in self.regs),
                "grouping": sorted({r.grouping for r in self.regs}),
                "gates": len(self.gates), "backend": o.backend, "world": current_world().size}
        if self.distill is not None:  # only then: checkpoints of earlier versions stay resumable
            run["distill"] = [self.distill.weight, self.distill.temperature]
        if o.restarts:
            run["restarts"] = list(o.restarts)
        return run

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

    def _save(self, session: Session, directory: Path, meta: dict) -> None:
        """The backend's checkpoint under a name of its own, then the record naming it, replaced
        atomically: a kill at any moment leaves the previous pair or the new one, never half of either."""
        directory.mkdir(parents=True, exist_ok=True)
        name = f"checkpoint-{meta['step']:08d}"
        session.save(directory / name)
        write_atomic_bytes(directory / STATE_FILE, json.dumps(dict(meta, checkpoint=name)))
        for old in directory.glob("checkpoint-*"):  # earlier checkpoints (and any data files beside them)
            if not old.name.startswith(name):
                old.unlink(missing_ok=True)
