"""Measuring the latency table (`--hardware measure`; what the table is and how it is fitted:
cost/latency.py).

The model is cut to a few structures (the full model, the smallest structure, and copies whose every
prunable group takes its own width at random, drawn from widths of every alignment: multiples of
32, odd multiples of 16, 8, 4, 2, and odd widths), each copy made by the same surgery `shrink`
writes with. Each copy is timed end to end (cost/timing.py) and run under onnxruntime's profiler;
every kernel of the graph onnxruntime optimized is attributed to an op of the original graph, so
that one copy gives one measurement of every op at its widths there, in context (the layout
changes and fusions onnxruntime makes around it included):

- a kernel named after an original node (a FusedConv keeps its Conv's name) is that node's; one
  named after an original tensor (with "_nchwc" appended: a convolution in the blocked layout, named
  after the activation it absorbed) is its producer's;
- a node that is not itself a costed op (a fused BatchNormalization or activation, a pooling op)
  passes its time up its first input to the op that produced its channels;
- a layout change (ReorderInput, ReorderOutput) belongs to the kernel it converts for: the next one
  for an input, the previous one for an output; a kernel onnxruntime made and named after its op
  type (a fused bias and activation, "BiasGelu_token_7") to the one before it, whose output it reads.

What no rule claims stays unattributed (reported as a share); the end-to-end fit absorbs it. Every
cut copy, the floor included, is measured the same way; the table is cached (cost/latency.py).
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..analysis.groups import Analysis
from ..analysis.walk import analyze, node_names
from ..cost.fitting import UnitFit, calibrate, copy_weights, fit_units, overheads
from ..cost.latency import LatencyTable, cache_folder, cached_table, load_table, machine_name, table_key
from ..cost.resources import Hardware, is_measure, parse_hardware
from ..cost.timing import (LatencySettings, Measurement, check_provider, measure_models, measure_opened, profile_nodes,
                           timing_feeds, timing_session)
from ..errors import MorphNetError
from ..loading.model import LoadedModel, load
from ..loading.placeholders import materialize_weights
from ..loading.shapes import InputShapes
from ..ops import BROADCASTING, CHANNEL_NORMS, MEMORY_BOUND
from .apply import Surgeon
from .feasibility import floor_structure, repair_structure
from .pruning import cut_for_training
from .structure import Structure

# Width classes of the random copies: widths that are multiples of `m` but not of 2m (32: of 32).
CLASSES = (32, 16, 8, 4, 2, 1)
DEFAULT_COPIES = 16
FOLLOWERS = frozenset(MEMORY_BOUND | set(CHANNEL_NORMS) | {"Relu", "Clip", "Identity", "Dropout", "MaxPool",
                                                          "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                                                          "Flatten", "Reshape", "Transpose", "Squeeze",
                                                          "Unsqueeze", "Erf", "Gelu", "Softmax", "Cast"})


def _width(n: int, fraction: float, step: int, rng: np.random.Generator) -> int:
    """A width near fraction x n that is a multiple of `step` but not of 2 x step (any multiple of
    32 for step 32), or the nearest width at all when no such width fits."""
    target = max(1.0, fraction * n)
    options = [w for w in range(step, n + 1, step) if step == CLASSES[0] or (w // step) % 2 == 1]
    if not options:
        return int(min(n, max(1, round(target))))
    return int(min(options, key=lambda w: (abs(w - target), rng.random())))


def random_copy(loaded: LoadedModel, analysis: Analysis, rng: np.random.Generator) -> Structure:
    """Every prunable group at its own random width (10% to 100%) of a random alignment; the first
    channels kept (which ones does not matter to the time), then repaired: in ShuffleNet v2 a
    group's first channels all land in one half of a split, and the other half's branch has no input."""
    structure = Structure.full(analysis)
    for group in analysis.prunable_groups:
        width = _width(group.width, rng.uniform(0.1, 1.0), int(rng.choice(CLASSES)), rng)
        structure.alive[group.id][width:] = False
    return repair_structure(loaded, analysis, structure)


# How onnxruntime's fusions rename a node: "fused NODE" (Gemm + activation: FusedGemm, AlexNet's and
# VGG's classifiers: 37% of the kernel time of AlexNet's table unattributed before),
# "NODE/MatMulAddFusion/" (MatMul + Add as a Gemm), "NODE/MatMulScaleFusion/" (FusedMatMul); group 1
# is the node's name.
FUSED_NAME = re.compile(r"(?:fused )?(.*?)(?:/[A-Za-z]+Fusion/)?")


class Attribution:
    """Which op of the original graph a profiled kernel of onnxruntime's optimized graph belongs to
    (the module docstring's rules)."""

    def __init__(self, model: onnx.ModelProto, analysis: Analysis) -> None:
        graph = model.graph
        self.nodes = dict(zip(node_names(graph), graph.node))
        self.producer = {out: name for name, node in self.nodes.items() for out in node.output if out}
        self.constants = {t.name for t in graph.initializer} | {
            node.output[0] for node in graph.node if node.op_type == "Constant" and node.output}
        self.costed = {c.op: c for c in analysis.costed}

    def _origin(self, kernel: str) -> str | None:
        if kernel not in self.nodes:
            kernel = FUSED_NAME.fullmatch(kernel).group(1)
        if kernel in self.nodes:
            return kernel
        for suffix in ("_nchwc", ""):
            if suffix and not kernel.endswith(suffix):
                continue
            tensor = kernel[: len(kernel) - len(suffix)] if suffix else kernel
            if tensor in self.producer:
                return self.producer[tensor]
        return None

    def _claims(self, name: str) -> bool:
        cost = self.costed.get(name)
        node = self.nodes[name]
        if cost is None:
            return False
        if cost.flops_coeff > 0:
            return True
        return not self._follows(node)

    def _follows(self, node: onnx.NodeProto) -> bool:
        """An op that only carries the channels of its one activation input (fused into its producer)."""
        live = [i for i in node.input if i and i not in self.constants]
        if node.op_type in BROADCASTING:
            return len(live) == 1
        return node.op_type in FOLLOWERS and len(live) >= 1

    def _made(self, kernel: str, op_type: str) -> bool:
        """A kernel onnxruntime made and named after its op type ("BiasGelu_token_7": a fused bias and
        activation, ViT's MLP; "Transpose_token_3"), no node of the graph."""
        return kernel not in self.nodes and (kernel == op_type or kernel.startswith(op_type + "_token_"))

    def unit(self, kernel: str) -> str | None:
        origin = self._origin(kernel)
        name = origin
        for _ in range(16):
            if name is None:
                break
            if self._claims(name):
                return name
            node = self.nodes[name]
            if not self._follows(node) and name in self.costed:
                return name
            live = [i for i in node.input if i and i not in self.constants]
            name = self.producer.get(live[0]) if live else None
        return origin if origin in self.costed else None

    def attribute(self, kernels: list[tuple[str, str, float]]) -> dict[str | None, list[float]]:
        """[kernel seconds, kernels] per unit of one profiled copy (None: what no rule claims)."""
        owners = [self.unit(name) for name, _, _ in kernels]
        for index, (name, op_type, _) in enumerate(kernels):
            if owners[index] is not None or not (op_type.startswith("Reorder") or self._made(name, op_type)):
                continue
            step = 1 if op_type == "ReorderInput" else -1
            other = index + step
            while 0 <= other < len(kernels) and (owners[other] is None or kernels[other][1].startswith("Reorder")):
                other += step
            if 0 <= other < len(kernels):
                owners[index] = owners[other]
        claimed: dict[str | None, list[float]] = {None: [0.0, 0.0]}
        for owner, (_, _, duration) in zip(owners, kernels):
            entry = claimed.setdefault(owner, [0.0, 0.0])
            entry[0] += duration
            entry[1] += 1
        return claimed


def named_copy(loaded: LoadedModel) -> LoadedModel:
    """The model with every node named as the analysis names it (unnamed nodes get `{op_type}_{index}`),
    so that the profiler reports the names the table keeps."""
    names = node_names(loaded.model.graph)
    if all(node.name == name for node, name in zip(loaded.model.graph.node, names)):
        return loaded
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    for node, name in zip(model.graph.node, names):
        node.name = name
    return LoadedModel(model=model, path=loaded.path, shapes=loaded.shapes, dtypes=loaded.dtypes,
                       upgraded_from=loaded.upgraded_from)


def timing_cut(loaded: LoadedModel, analysis: Analysis, structure: Structure) -> onnx.ModelProto:
    """The structure cut out for timing: `shrink`'s surgery, without computing what removed channels
    hold (their constants change biases, not the graph) unless a group vanishes (then branches go)."""
    if any(not structure.alive[g.id].any() for g in analysis.prunable_groups):
        return cut_for_training(loaded, analysis, structure).model
    return Surgeon(loaded, analysis, structure, approximate_norms=True).rewrite()[0]


def measure_table(loaded: LoadedModel, analysis: Analysis, settings: LatencySettings, key: str, ort_version: str,
                  copies: int = DEFAULT_COPIES, seed: int = 0, progress=None) -> LatencyTable:
    """Cut, time and profile the copies; fit the table (see the module docstring)."""
    started = time.perf_counter()
    loadavg = list(os.getloadavg()[:1])
    loaded = named_copy(loaded)
    rng = np.random.default_rng(seed)
    plan = [("full", Structure.full(analysis)), ("floor", floor_structure(loaded, analysis))]
    plan += [(f"random {i + 1}", random_copy(loaded, analysis, rng)) for i in range(copies)]
    attribution = Attribution(loaded.model, analysis)
    units = {}
    for cost in analysis.costed:
        n_in, n_out = cost.counts()
        rep_in = n_in / max(len(np.unique(cost.in_ids)), 1) if cost.in_ids is not None else 1.0
        rep_out = n_out / max(len(np.unique(cost.out_ids)), 1) if cost.out_ids is not None else 1.0
        units[cost.op] = UnitFit(cost.op, n_in, n_out, rep_in, rep_out)
    records = []
    phases = {"cut_s": 0.0, "time_s": 0.0, "profile_s": 0.0}
    reference = None
    for index, (label, structure) in enumerate(plan):
        if progress is not None:
            progress(index, len(plan), label)
        alive = structure.element_alive(analysis)
        clock = time.perf_counter()
        model = loaded.model if label == "full" else timing_cut(loaded, analysis, structure)
        phases["cut_s"] += time.perf_counter() - clock
        clock = time.perf_counter()
        # The full model and the floor anchor every budget: three sessions each; a copy one session,
        # its share of the full model's time known to 1.5% (3% on the wall clock: a share carries both
        # models' noise; the fit is off by 5-13% on copies it did not see).
        if label in ("full", "floor"):
            tolerance, budget, sessions = 0.005, 10.0, 3
        else:
            tolerance, budget, sessions = (0.015 if settings.clock == "cpu" else 0.03), 4.0, 1
        if label == "full":
            measured = measure_models([model], settings, loaded.shapes, tolerance=tolerance, max_seconds=budget,
                                      sessions=sessions)[0]
        else:
            if reference is None:  # one session of the full model serves every copy
                reference = timing_session(loaded.model, settings)
            measured = _against_full(loaded.model, reference, model, records[0]["measured"], settings,
                                     loaded.shapes, tolerance, budget, sessions)
        phases["time_s"] += time.perf_counter() - clock
        clock = time.perf_counter()
        claimed = attribution.attribute(profile_nodes(model, settings, loaded.shapes))
        phases["profile_s"] += time.perf_counter() - clock
        counts = {cost.op: cost.counts(alive) for cost in analysis.costed}
        records.append({"copy": label, "measured": measured, "counts": counts, "claimed": claimed})
    if progress is not None:
        progress(len(plan), len(plan), "fit")
    clock = time.perf_counter()
    table = _fit_table(records, units, LatencyTable(key=key, model=loaded.name, settings=settings,
                                                    onnxruntime=ort_version, machine=machine_name(), units=units),
                       started, loadavg)
    table.phases = {**phases, "fit_s": time.perf_counter() - clock}
    return table


def _against_full(full_model: onnx.ModelProto, reference, model: onnx.ModelProto, full: Measurement,
                  settings: LatencySettings, shapes: dict, tolerance: float, max_seconds: float,
                  sessions: int) -> Measurement:
    """A copy is timed against the full model (`reference`: a session of it, kept for every copy; more
    where the copy has more sessions), its time the paired share of the full model's (cost/timing.py)
    times the full model's measured time: the machine's speed changes between one copy and the next,
    and copies timed alone at different speeds fit no table. On the wall clock two threads on this
    2-core VM sometimes run no faster than one; on the thread's CPU clock too a stretch of minutes
    ran every model about 1.9x slower (2026-12-06: 4 of a ViT table's 16 copies, timed alone,
    measured 117-135 us, and 60-72 us timed again), so the copies are paired on both clocks."""
    opened = []
    for index in range(sessions):
        opened += [reference if index == 0 else timing_session(full_model, settings),
                   timing_session(model, settings)]
    feeds = [timing_feeds(session, shapes, settings.batch) for session in opened]
    full_now, paired = measure_opened(opened, feeds, 2, settings.clock, tolerance, max_seconds, paired=True)
    share, noise = paired.share_of(full_now)
    return Measurement(share * full.median_s, noise, paired.runs, paired.clock, share, noise)


def _fit_table(records: list[dict], units: dict[str, UnitFit], table: LatencyTable, started: float,
               loadavg: list[float]) -> LatencyTable:
    """Kernel times to unit samples (each copy's kernels scaled to its end-to-end time, less what a
    run costs besides its kernels), the units' fits, the end-to-end calibration."""
    measured = [r["measured"].median_s for r in records]
    totals = [[sum(v[0] for v in r["claimed"].values()), sum(v[1] for v in r["claimed"].values())] for r in records]
    run, rate, node = overheads(measured, [t[0] for t in totals], [t[1] for t in totals])
    weights = copy_weights(measured, measured[0])
    lost = []
    for index, (record, total, seconds) in enumerate(zip(records, totals, measured)):
        modelled = rate * total[0] + node * total[1]
        gamma = (seconds - run) / modelled if modelled > 0 else 0.0
        claimed = record["claimed"]
        lost.append(gamma * (rate * claimed[None][0] + node * claimed[None][1]))
        for op, (n_in, n_out) in record["counts"].items():
            if n_in > 0 and n_out > 0:
                kernel, count = claimed.get(op, (0.0, 0.0))
                units[op].samples.append([n_in, n_out, gamma * (rate * kernel + node * count), weights[index], index])
    copies = [(r["counts"], seconds) for r, seconds in zip(records, measured)]
    held_out = [i for i, r in enumerate(records) if r["copy"] not in ("full", "floor")]
    table.block, table.levels, table.cross_validated = fit_units(units, copies, run + float(np.mean(lost)), held_out)
    sums = [sum(float(table.op_seconds(op, *c)) for op, c in r["counts"].items()) for r in records]
    table.offset_s, table.scale = calibrate(sums, measured, weights)
    for record, fitted_sum in zip(records, sums):
        m = record["measured"]
        table.structures.append({"copy": record["copy"], "measured_s": m.median_s, "noise": m.noise,
                                 "fitted_s": table.offset_s + table.scale * fitted_sum, "runs": m.runs})
    table.full, table.floor = records[0]["measured"], records[1]["measured"]
    profiled = sum(t[0] for t in totals)
    table.unattributed_share = sum(r["claimed"][None][0] for r in records) / profiled if profiled else 1.0
    table.overheads = {"run_s": run, "kernel_rate": rate, "node_s": node, "unattributed_mean_s": float(np.mean(lost))}
    table.seconds = time.perf_counter() - started
    table.loadavg = loadavg + list(os.getloadavg()[:1])
    table.date = time.strftime("%Y-%m-%d %H:%M:%S %z")
    return table


def latency_table(model, settings: LatencySettings | None = None, input_shapes: InputShapes | None = None,
                  table_path: str | os.PathLike | None = None, cache: bool = True, copies: int = DEFAULT_COPIES,
                  seed: int = 0, progress=None, refresh: bool = False) -> LatencyTable:
    """The model's latency table at `settings` (provider, threads, batch): read from `table_path`
    when that file exists, else from the cache when one was measured for the same key, else
    measured (about 1 to 2 minutes for a ResNet-50 on 2 cores) and written to the cache and to
    `table_path`. A file of another model or other settings is refused. `refresh`: measure again
    even when the cache holds a table (the new one replaces it).

    >>> table = latency_table("resnet50.onnx", LatencySettings(threads=1))   # doctest: +SKIP
    >>> table.full.median_s, table.floor.median_s, table.block              # doctest: +SKIP
    (0.0602, 0.0041, 16)
    """
    import onnxruntime as ort  # loaded on first use: the table's key holds its version

    settings = settings or LatencySettings()
    check_provider(settings)
    loaded = model if isinstance(model, LoadedModel) else load(model, input_shapes)
    if not isinstance(model, LoadedModel):
        loaded.model = materialize_weights(loaded.model, seed)
    settings = settings.for_model(loaded.model, loaded.name)
    key = table_key(loaded.model, settings, ort.__version__)
    if table_path is not None and Path(table_path).is_file():
        table = load_table(table_path)
        if table.key != key:
            raise MorphNetError(f"--latency-table {table_path}: measured for another model or other settings "
                                f"({table.model}: {table.settings.describe()}, onnxruntime {table.onnxruntime}, "
                                f"{table.machine}); remove it to measure this one")
        table.origin = "file"
        return table
    table = cached_table(key) if cache and not refresh else None
    if table is not None:
        table.origin = "cache"
    else:
        analysis = analyze(loaded)
        if not analysis.prunable_groups:
            raise MorphNetError(f"{loaded.name}: nothing to prune, so nothing to measure a latency table for")
        table = measure_table(loaded, analysis, settings, key, ort.__version__, copies, seed, progress)
        table.origin = "measured"
        if cache:
            try:
                table.save(_cache_path(key))
            except OSError:
                pass  # a read-only home: the table still serves this run
    if table_path is not None:
        path = table.path
        table.save(table_path)
        table.path = path if path is not None else Path(table_path)
    return table


def measure_latency(models: list, settings: LatencySettings | None = None, input_shapes: InputShapes | None = None,
                    tolerance: float = 0.01, max_seconds: float = 30.0) -> list[Measurement]:
    """End-to-end latency of each model (paths or ModelProtos) at `settings`, measured in alternated
    rounds in this process until every median (on the wall clock, or every share of the first
    model's time) is known to `tolerance` (cost/timing.py): compare a model with the first by
    `share_of` (the ratio of the medians on the CPU clock, paired turns on the wall clock).

    >>> before, after = measure_latency(["resnet50.onnx", "small.onnx"], LatencySettings(threads=1))  # doctest: +SKIP
    >>> after.share_of(before)                                                                        # doctest: +SKIP
    (0.49, 0.008)
    """
    settings = settings or LatencySettings()
    check_provider(settings)
    loaded = [load(m, input_shapes) for m in models]
    for item in loaded:
        item.model = materialize_weights(item.model, 0)
    shapes = {name: shape for item in loaded for name, shape in item.shapes.items()}
    settings = settings.for_model(loaded[0].model, loaded[0].name)
    return measure_models([item.model for item in loaded], settings, shapes, tolerance, max_seconds)


def resolve_hardware(spec: str | None, batch: int, model, provider: str = "CPUExecutionProvider", threads: int = 0,
                     table_path: str | os.PathLike | None = None, input_shapes: InputShapes | None = None,
                     progress: bool = False) -> Hardware | LatencyTable:
    """What a command's latency is: the roofline `spec` names, or, for `measure` (or a table file),
    the model's measured table at the provider, threads and batch given."""
    if not is_measure(spec) and table_path is None:
        return parse_hardware(spec, batch)
    settings = LatencySettings(provider, threads, batch)
    with table_progress(progress) as callback:
        return latency_table(model, settings, input_shapes, table_path, progress=callback)


@contextmanager
def table_progress(enabled: bool):
    """A progress bar on stderr while a table is measured (yields the callback, or None)."""
    if not enabled:
        yield None
        return
    bar = Progress(TextColumn("latency table"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[stage]}"), transient=True, console=Console(stderr=True))
    task = bar.add_task("latency table", total=None, stage="")

    def update(done: int, total: int, stage: str) -> None:
        bar.update(task, completed=done, total=total, stage=stage)

    with bar:
        yield update


def _cache_path(key: str) -> Path:
    return cache_folder() / f"{key}.json"
