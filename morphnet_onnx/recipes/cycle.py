"""`cycle`: MorphNet's whole recipe, N rounds of shrink -> expand -> retrain from scratch -> evaluate.

Round 0 is the original network retrained from scratch with the same recipe (the row every round is
compared with). Round r shrinks the network of round r-1 (round 1: the given model, with its
weights) under `shrink_to` x the budget, expands the learned structure back to the budget with one
width multiplier and fresh weights, trains it from scratch and evaluates it. Every finished step is
recorded in `cycle.json` in the output folder; `resume` skips finished steps (and continues an
interrupted training from its checkpoint), so a killed run loses at most its last checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..analysis.walk import analyze
from ..cost.budget import Budget
from ..cost.resources import compute_costs, resource_cost
from ..errors import Interrupted, MorphNetError
from ..expansion.expand import expand
from ..loading.model import load
from ..loading.shapes import InputShapes
from ..loading.writing import check_output_path, write_atomic_bytes
from ..surgery.latency import resolve_hardware
from ..surgery.pruning import prepare
from ..training.data import open_data
from ..training.distributed import barrier, is_main
from ..training.graph import check_trainable
from ..training.trainer import TrainOptions
from .measured import measured_under_torchrun
from .shrink import ShrinkOptions, check_shrinkable, evaluate, shrink, train

STATE_FILE = "cycle.json"
# Each round shrinks to this share of the budget before expanding back (MorphNet's "shrink" step
# must leave room for the expansion to move resources between layers).
SHRINK_TO = 0.5


@dataclass
class CycleRow:
    round: int
    model: str  # the trained model of the round
    structure: str | None  # the structure shrink learned (None for round 0)
    multiplier: float | None  # expand's width multiplier (None for round 0)
    flops: float
    params: int
    latency_s: float
    cost: float  # in the budget's resource
    accuracy: float | None
    top5: float | None
    mse: float | None


@dataclass
class CycleResult:
    resource: str
    target: float
    rows: list[CycleRow] = field(default_factory=list)
    out_dir: str = ""

    def to_dict(self) -> dict:
        return {"resource": self.resource, "target": self.target, "out_dir": self.out_dir,
                "rows": [asdict(row) for row in self.rows]}


def cycle(model: str | os.PathLike, data=None, val=None, *, budget: Budget, out_dir: str | os.PathLike,
          rounds: int = 2, shrink_to: float = SHRINK_TO, options: TrainOptions | None = None,
          data_module: str | None = None, regularizer: str = "auto", grouping: str = "max", round_to: int = 1,
          keep: list[str] | None = None, input_shapes: InputShapes | None = None, hardware: str | None = None,
          cost_batch_size: int = 1, resume: bool = False, force: bool = False,
          provider: str = "CPUExecutionProvider", latency_threads: int = 0,
          latency_table: str | os.PathLike | None = None) -> CycleResult:
    """Run `rounds` rounds of shrink -> expand -> retrain from scratch -> evaluate (module docstring).

    >>> cycle("resnet.onnx", "train.npz", "val.npz", budget=Budget("flops", "1.0x"), out_dir="runs")  # doctest: +SKIP

    `budget`: relative budgets are of `model`. `options`: the one training recipe every step uses.
    The models, structures and the table (`cycle.json`) go to `out_dir`. `regularizer`, `grouping`,
    `round_to`, `keep`, `hardware`, `cost_batch_size`, `force`, `provider`, `latency_threads`: each
    round's shrink (`ShrinkOptions`). With `hardware="measure"` the budget is the original's measured
    latency (its table, `latency_table`), each round's shrink measures its own model's table and lands
    on the measurement, and expand reads the original's table.
    """
    options = options or TrainOptions()
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise MorphNetError(f"--rounds {rounds}: must be a whole number, 1 or more")
    if not 0 < shrink_to < 1:
        raise MorphNetError(f"--shrink-to {shrink_to}: must be between 0 and 1 (a share of the budget)")
    # Round 1's shrink options, checked before round 0 trains.
    method = ShrinkOptions(budget=budget, regularizer=regularizer, grouping=grouping, hardware=hardware,
                           cost_batch_size=cost_batch_size, round_to=round_to, keep=keep, force=force,
                           provider=provider, latency_threads=latency_threads)
    if val is None:
        raise MorphNetError("cycle compares the rounds on validation data: give --val VAL.npz")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MorphNetError(f"--out-dir {out}: is a file; give a folder")
    check_output_path(out / STATE_FILE if out.is_dir() else out, "--out-dir")
    original, analysis = prepare(model, input_shapes, keep)
    check_trainable(original)
    if measured_under_torchrun(hardware, latency_table):
        # each round's shrink measures its own model's table (check_table_source would refuse round 1)
        raise MorphNetError("cycle --hardware measure under torchrun: each round times its own model, and ranks "
                            "timing at once would disagree; run the cycle in one process")
    hw = resolve_hardware(hardware, cost_batch_size, original, provider, latency_threads, latency_table,
                          progress=options.progress and is_main())
    full = resource_cost(compute_costs(analysis, original, hw), budget.resource)
    target = budget.target(full)
    # What round 1's shrink would refuse, and bad data, fail here, before round 0 trains or anything
    # is written (every step reads the same files).
    check_shrinkable(original, analysis, hw, budget.resource, full, shrink_to * target,
                     f"{budget.text} x --shrink-to {shrink_to:g}")
    open_data(data, val, data_module, original, options.loss, options.images)[0].require_batches(options.batch_size)
    config = {"model": str(Path(model).resolve()), "resource": budget.resource, "target": target,
              "shrink_to": shrink_to, "regularizer": regularizer, "grouping": grouping, "round_to": round_to,
              "seed": options.seed}
    state = _open_state(out, config, resume)
    result = CycleResult(budget.resource, target, out_dir=str(out))

    def run_step(name: str, step):
        """Run one step unless a previous run finished it; record what it returned. Under torchrun
        every rank runs it, rank 0 writes, and the others wait for its files before the next step."""
        if name not in state["steps"]:
            try:
                state["steps"][name] = step()
            except KeyboardInterrupt as exc:
                done = ", ".join(state["steps"]) or "none yet"
                text = f"interrupted in cycle step {name}; finished steps ({done}) are recorded in {out / STATE_FILE}"
                # Training says where its checkpoint is and how to resume; any other step starts over.
                raise Interrupted(f"{text}; {exc}" if str(exc) else
                                  f"{text}; run the same command with --resume to continue") from exc
            if is_main():
                write_atomic_bytes(out / STATE_FILE, json.dumps(state, indent=1) + "\n")
            barrier()
        return state["steps"][name]

    def options_for(name: str) -> TrainOptions:
        return replace(options, checkpoint_dir=out / "checkpoints" / name, resume=resume)

    def retrain(name: str, source: Path, output: Path, init: str) -> dict:
        learned = train(source, data, output, val=None, options=options_for(name), data_module=data_module,
                        input_shapes=input_shapes, init=init)
        return {"model": str(output), "steps": learned.steps, "warnings": learned.warnings}

    run_step("round0/train", lambda: retrain("round0", Path(model), out / "round0.onnx", "fresh"))
    result.rows.append(_row(0, out / "round0.onnx", None, None, val, options, input_shapes, hw, budget.resource))
    seed_model = Path(model)
    for index in range(1, rounds + 1):
        shrunk, structure = out / f"round{index}_shrunk.onnx", out / f"round{index}_structure.json"
        expanded, trained = out / f"round{index}_expanded.onnx", out / f"round{index}.onnx"
        shrink_budget = Budget(budget.resource, _absolute(shrink_to * target, budget.resource))

        def do_shrink(source=seed_model, shrunk=shrunk, structure=structure, shrink_budget=shrink_budget,
                      index=index):
            learned = shrink(source, data, shrunk, val=val, method=replace(method, budget=shrink_budget),
                             options=options_for(f"round{index}_shrink"), data_module=data_module,
                             input_shapes=input_shapes, structure_path=structure)
            return {"model": str(shrunk), "cost": learned.cost_after, "warnings": learned.warnings}

        def do_expand(shrunk=shrunk, expanded=expanded, index=index):
            grown = expand(shrunk, expanded if is_main() else None, budget=Budget(budget.resource, _absolute(target, budget.resource)),
                           round_to=round_to, init="fresh", seed=options.seed + index, input_shapes=input_shapes,
                           keep=keep, hardware=hardware, cost_batch_size=cost_batch_size,
                           reference=model if method.measured else None, provider=provider,
                           latency_threads=latency_threads, latency_table=latency_table)
            return {"model": str(expanded), "multiplier": grown.multiplier, "cost": grown.cost_after}

        run_step(f"round{index}/shrink", do_shrink)
        grown = run_step(f"round{index}/expand", do_expand)
        run_step(f"round{index}/train", lambda expanded=expanded, trained=trained, index=index:
                 retrain(f"round{index}", expanded, trained, "keep"))
        result.rows.append(_row(index, trained, structure, grown["multiplier"], val, options, input_shapes, hw,
                                budget.resource))
        seed_model = trained
    state["table"] = result.to_dict()
    if is_main():
        write_atomic_bytes(out / STATE_FILE, json.dumps(state, indent=1) + "\n")
    return result


def _absolute(value: float, resource: str) -> str:
    return f"{value!r}s" if resource == "latency" else repr(value)


def _open_state(out: Path, config: dict, resume: bool) -> dict:
    path = out / STATE_FILE
    if path.exists():
        if not resume:
            raise MorphNetError(f"{out} already holds a cycle ({STATE_FILE}); add --resume to continue it, "
                                f"or choose another --out-dir")
        try:
            state = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MorphNetError(f"{path}: not valid JSON ({exc}); remove it to start over") from exc
        if state.get("config") != config:
            changed = sorted(k for k in config if state.get("config", {}).get(k) != config[k])
            raise MorphNetError(f"{path}: this cycle was started with other settings ({', '.join(changed)}); "
                                f"choose another --out-dir")
        for name, record in state.get("steps", {}).items():
            if not Path(record["model"]).exists():
                raise MorphNetError(f"{path}: step {name} is recorded but {record['model']} is missing; "
                                    f"remove {STATE_FILE} to start over")
        return state
    out.mkdir(exist_ok=True)
    return {"config": config, "steps": {}}


def _row(index: int, model: Path, structure: Path | None, multiplier: float | None, val, options: TrainOptions,
         input_shapes, hardware, resource: str) -> CycleRow:
    loaded = load(model, input_shapes)
    costs = compute_costs(analyze(loaded), loaded, hardware)
    score = evaluate(model, val, loss=options.loss, input_shapes=input_shapes, images=options.images)
    return CycleRow(index, str(model), str(structure) if structure else None, multiplier, costs.flops, costs.params,
                    costs.latency_s, resource_cost(costs, resource), score.accuracy, score.top5, score.mse)
