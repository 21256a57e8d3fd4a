"""Timing a model in onnxruntime the way a deployment runs it: the execution provider, intra-op threads
and batch the user names (`LatencySettings`), graph optimizations on, one sequential run per call.

What is timed, and on which clock: a run of one CPU thread is timed on the calling thread's CPU clock
(`time.thread_time`: onnxruntime computes on the caller's thread when it has one intra-op thread, and
that clock does not count the time other processes hold the core, so a shared machine measures
what an idle one would); every other run (several threads, other providers) on the wall clock. A
session of several threads keeps its pool's threads spinning for a while after each run (onnxruntime's
default, as deployed), and those threads take cores from the next session run in the same process:
measured on this 2-core machine at the default threads, ResNet-50 ran at 68 ms in the first run after
another session's and 38 ms from the second on (38 ms alone in a process), MobileNet v2 at 6-8 ms for
the first 60 ms and 4.2 ms after (4.3 ms alone). So on the wall clock a session runs untimed for
SETTLE_SECONDS whenever the rounds switch to it (the spinning stays on: that is what a deployment runs
with; without it MobileNet v2 ran 28% slower alone). A
measurement runs until its median is known to `tolerance`: the half-width of the distribution-free
95% confidence interval of the median, relative to it, is the noise reported with it. Several
models are measured in alternated rounds so that drift hits them alike, each in three sessions of
its own (a session can run a small model slower throughout: measured on this machine, one of five
sessions of a 0.06 ms model ran at 0.13 ms).

On the wall clock a model's time against the first model's (`Measurement.share_of`) is paired: each
turn of the model against the first model's turns just before and after it (about 0.1 s apart),
not the ratio of the two medians. What the wall clock sees changes while it measures: on this 2-core
VM two threads sometimes run no faster than one for seconds at a time (MobileNet v2 4.0 or 6.9 ms),
and when such spells cover part of a measurement each model's median falls on either speed. With a
process taking one core for 0.3-3 s spells, MobileNet v2 against a copy at 0.41x: ratios of the
medians 0.21-0.45 over ten measurements (standard deviation 0.07-0.08), paired ratios 0.38-0.46
(0.015-0.024). On the thread's CPU clock other processes do not reach the measurement: the ratio of
the medians.

Per-node times come from onnxruntime's profiler: the median duration of every kernel over a few
runs, in execution order (surgery/latency.py attributes them to the ops of the original graph).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from ..errors import MorphNetError, first_line
from ..graph_utils import fixed_batch
from ..loading.external import needs_a_file, on_disk
from ..loading.runtime import unoptimized_session
from ..stopping import raise_if_stop_requested

CPU = "CPUExecutionProvider"
# A run takes at least this long to count as measured; shorter runs are repeated within a round.
ROUND_SECONDS = 0.02
SESSIONS = 3  # sessions per model in an end-to-end measurement
# On the wall clock, how long a session runs untimed after the rounds switch to it: the previous
# session's threads spun for about 60 ms on this machine (module docstring).
SETTLE_SECONDS = 0.1


@dataclass(frozen=True)
class LatencySettings:
    """Where latency is measured: an onnxruntime execution provider, its intra-op threads (0:
    onnxruntime's default, one per physical core) and the batch of every run."""

    provider: str = CPU
    threads: int = 0
    batch: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.provider, str) or not self.provider:
            raise MorphNetError(f"--provider {self.provider!r}: name an onnxruntime execution provider, e.g. {CPU}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise MorphNetError(f"--latency-threads {self.threads}: must be 0 (onnxruntime's default) or more")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise MorphNetError(f"--cost-batch-size {self.batch}: must be 1 or more")

    def for_model(self, model: onnx.ModelProto, name: str) -> LatencySettings:
        """These settings at the batch `model` runs at: an export with a fixed batch (torch's dynamo
        exporter writes one unless given `dynamic_shapes`) runs at that batch only, so the default
        batch 1 becomes it, and it is what is timed and reported; another batch is refused."""
        fixed = fixed_batch(model)
        if fixed is None or fixed == self.batch:
            return self
        if self.batch != 1:
            raise MorphNetError(f"{name}: its input has a fixed batch of {fixed}, so it cannot be timed at batch "
                                f"{self.batch} (--cost-batch-size); re-export it with a symbolic batch")
        return replace(self, batch=fixed)

    @property
    def clock(self) -> str:
        """"cpu" (the calling thread's CPU time) for one CPU thread, else "wall"."""
        return "cpu" if self.threads == 1 and self.provider == CPU else "wall"

    def describe(self) -> str:
        threads = "onnxruntime's default threads" if self.threads == 0 else \
            f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        return f"{self.provider}, {threads}, batch {self.batch}"

    def to_dict(self) -> dict:
        return {"provider": self.provider, "threads": self.threads, "batch": self.batch, "clock": self.clock}


@dataclass
class Measurement:
    """The median time of one run, its noise (relative half-width of the 95% confidence interval of
    the median) and how many runs it took."""

    median_s: float
    noise: float
    runs: int
    clock: str
    # On the wall clock, the time as a share of the first model measured with it, from paired turns
    # (module docstring), and that share's relative noise; None on the CPU clock and for the first model.
    ratio: float | None = None
    ratio_noise: float | None = None

    def share_of(self, reference: Measurement) -> tuple[float, float]:
        """(this model's time as a share of `reference`'s, its relative noise); `reference` is the
        first model of the same measurement."""
        if self.ratio is not None:
            return self.ratio, float(self.ratio_noise)
        return self.median_s / reference.median_s, math.hypot(reference.noise, self.noise)

    def to_dict(self) -> dict:
        data = {"median_s": self.median_s, "noise": self.noise, "runs": self.runs, "clock": self.clock}
        if self.ratio is not None:
            data.update(ratio=self.ratio, ratio_noise=self.ratio_noise)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        ratio = data.get("ratio")
        return cls(float(data["median_s"]), float(data["noise"]), int(data["runs"]), str(data["clock"]),
                   None if ratio is None else float(ratio),
                   None if ratio is None else float(data["ratio_noise"]))


def check_provider(settings: LatencySettings) -> None:
    import onnxruntime as ort  # loaded on first use: `inspect` without --hardware measure never needs it

    available = ort.get_available_providers()
    if settings.provider not in available:
        raise MorphNetError(f"--provider {settings.provider}: not in this onnxruntime build "
                            f"(available: {', '.join(available)})")


def timing_session(model: onnx.ModelProto | Path, settings: LatencySettings, profile_dir: str | None = None):
    """A session as deployed (default graph optimizations, sequential), with the settings' provider
    and threads; with `profile_dir`, onnxruntime's profiler writes its trace there."""
    import onnxruntime as ort  # loaded on first use, as in loading/runtime.py

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if settings.threads:
        options.intra_op_num_threads = settings.threads
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / "profile")
    providers = [settings.provider] + ([CPU] if settings.provider != CPU else [])
    if isinstance(model, onnx.ModelProto) and needs_a_file(model):
        model = on_disk(model)
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:
        # only to say why: a model is timed as deployed, with the optimizations on
        if unoptimized_session(ort, source, options, providers) is None:
            raise MorphNetError(f"onnxruntime cannot load the model for timing: {first_line(exc, 300)}") from exc
        raise MorphNetError(f"onnxruntime's graph optimizations fail on this model, so it cannot be timed as it "
                            f"would be deployed ({first_line(exc, 200)}); check, prune and training run it with "
                            f"them off") from exc


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
                "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def timing_feeds(session, shapes: dict[str, tuple[int, ...]], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs at `batch`: normal floats, small non-negative integers. Symbolic dims other
    than the batch take the static shapes the model was loaded with."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in session.get_inputs():
        known = shapes.get(value.name)
        dims = []
        for axis, dim in enumerate(value.shape):
            if axis == 0:
                fixed = isinstance(dim, int) and dim > 0
                if fixed and dim != batch and batch != 1:
                    raise MorphNetError(f"input {value.name!r} has a fixed batch of {dim}: it cannot be timed at "
                                        f"batch {batch} (--cost-batch-size); re-export it with a symbolic batch")
                dims.append(dim if fixed else batch)
            elif isinstance(dim, int) and dim > 0:
                dims.append(dim)
            elif known is not None and axis < len(known):
                dims.append(int(known[axis]))
            else:
                raise MorphNetError(f"input {value.name!r} has a symbolic dim {dim!r}: give --input-shape")
        dtype = _NUMPY_TYPES.get(value.type)
        if dtype is None:
            raise MorphNetError(f"input {value.name!r} of type {value.type}: cannot make data to time it")
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[value.name] = rng.integers(0, 2, dims).astype(dtype)
    return feeds


def median_noise(times: list[float] | np.ndarray) -> tuple[float, float]:
    """(median, relative half-width of its distribution-free 95% confidence interval)."""
    values = np.sort(np.asarray(times, dtype=float))
    n = len(values)
    median = float(np.median(values))
    if n < 3 or median <= 0:
        return median, 1.0
    half = 1.96 * np.sqrt(n) / 2
    low = max(int(np.floor(n / 2 - half)), 0)
    high = min(int(np.ceil(n / 2 + half)), n - 1)
    return median, float((values[high] - values[low]) / 2 / median)


def _timer(clock: str):
    return time.thread_time if clock == "cpu" else time.perf_counter


def _run(session, feeds) -> None:
    try:
        session.run(None, feeds)
    except Exception as exc:
        raise MorphNetError(f"onnxruntime cannot run the model for timing: {first_line(exc, 300)}") from exc


def measure_sessions(sessions: list, feeds: list[dict], clock: str, tolerance: float = 0.01, min_runs: int = 9,
                     max_seconds: float = 10.0, warmup: int = 2,
                     model_of: list[int] | None = None) -> tuple[list[Measurement], list[tuple[int, float]]]:
    """Median time per run of each session, measured in alternated rounds until every median is
    known to `tolerance`, or, given `model_of` (each session's model), every session's paired share
    of model 0's time is (or `max_seconds` have passed); on the wall clock each session settles
    (runs untimed) when its turn comes, so that no other session's spinning threads share its cores.
    Also the turns in the order they ran: (session, median time of its runs in that turn)."""
    timer = _timer(clock)
    times: list[list[float]] = [[] for _ in sessions]
    turns: list[tuple[int, float]] = []
    settle = clock == "wall" and len(sessions) > 1
    # A turn that settles first times runs as long as its settle: settling costs at most half the time.
    turn_seconds = max(ROUND_SECONDS, SETTLE_SECONDS) if settle else ROUND_SECONDS
    repeats = []
    for session, feed in zip(sessions, feeds):
        count, start = 0, time.perf_counter()
        while count < warmup or time.perf_counter() - start < 0.2:  # a fresh session's first runs are slow
            _run(session, feed)
            count += 1
        start = time.perf_counter()
        _run(session, feed)
        repeats.append(max(1, min(50, int(turn_seconds / max(time.perf_counter() - start, 1e-6)))))
    started = time.perf_counter()
    rounds = 0
    while True:
        order = list(range(len(sessions)))
        order = order[rounds % len(order):] + order[:rounds % len(order)]
        for index in order:
            session, feed = sessions[index], feeds[index]
            if settle:
                start = time.perf_counter()
                while time.perf_counter() - start < SETTLE_SECONDS:
                    _run(session, feed)
            turn = []
            for _ in range(repeats[index]):
                begin = timer()
                _run(session, feed)
                turn.append(timer() - begin)
            times[index].extend(turn)
            turns.append((index, float(np.median(turn))))
        rounds += 1
        raise_if_stop_requested()  # a signal whose own raise a finalizer swallowed
        stats = [median_noise(t) for t in times]
        enough = all(len(t) >= min_runs for t in times) and rounds >= 3
        if enough and (all(noise <= tolerance for _, noise in stats) or _shares_known(turns, model_of, tolerance)
                       or time.perf_counter() - started > max_seconds):
            break
    return [Measurement(median, noise, len(t), clock) for (median, noise), t in zip(stats, times)], turns


def _shares_known(turns: list[tuple[int, float]], model_of: list[int] | None, tolerance: float) -> bool:
    if model_of is None:
        return False
    shares = paired_shares(turns, model_of)
    return len(shares) == sum(1 for m in model_of if m) and all(median_noise(v)[1] <= tolerance
                                                                    for v in shares.values())


def paired_shares(turns: list[tuple[int, float]], model_of: list[int]) -> dict[int, list[float]]:
    """Per session of a model other than model 0: each of its turns' time over the geometric mean of
    model 0's nearest turns before and after it (one where there is only one)."""
    shares: dict[int, list[float]] = {}
    reference = [position for position, (session, _) in enumerate(turns) if model_of[session] == 0]
    for position, (session, seconds) in enumerate(turns):
        if model_of[session] == 0 or not reference:
            continue
        after = int(np.searchsorted(reference, position))
        around = [turns[reference[i]][1] for i in (after - 1, after) if 0 <= i < len(reference)]
        shares.setdefault(session, []).append(seconds / float(np.exp(np.mean(np.log(around)))))
    return shares


def _pooled(medians: list[float], noises: list[float]) -> tuple[float, float]:
    """A model's value from its sessions' (median of their medians) and its noise: the larger of the
    sessions' own noise and half the range of their medians."""
    medians = sorted(medians)
    median = float(np.median(medians))
    spread = (medians[-1] - medians[0]) / 2 / median if median else 0.0
    return median, float(max(max(noises), spread))


def measure_models(models: list[onnx.ModelProto | Path], settings: LatencySettings, shapes: dict,
                   tolerance: float = 0.01, max_seconds: float = 10.0, sessions: int = SESSIONS) -> list[Measurement]:
    """End-to-end latency of each model (alternated rounds), at the settings. Each model runs in
    `sessions` sessions of its own, alternated with the rest: one session can run a small model
    slower throughout (where its buffers fall, what shares its core), so a model's time is the
    median of its sessions' medians; its noise the larger of the pooled runs' and half the range of
    its sessions' medians: about how far a second measurement lands. (Measured on this machine, 1
    thread, 10 measurements of three models of 25-50 us against the original: their ratios to it
    spread by 3.0, 1.7 and 1.7% (standard deviation); the noise reported for the ratio was 3.5, 2.1
    and 0.7% this way, 0.7, 0.8 and 0.6% with half the spread between the two closest sessions.
    Nine sessions for a run under 1 ms were tried and not kept: the spread in a loop halved, but
    landings of the 1-D ResNet at 0.25x and 0.5x, 5 seeds each, ended within -10%/+5% of the
    budget 7 times in 10, against 9 in 10 with this rule: docs/benchmarks.md.) On the wall clock
    every model after the first also gets its share of the first's time from paired turns, pooled
    over its sessions the same way (module docstring), and the measurement ends once those shares
    are known to `tolerance` (or every median is). The sessions alternate model by model, so that
    each turn has a turn of the first model beside it."""
    opened = [timing_session(model, settings) for _ in range(sessions) for model in models]
    feeds = [timing_feeds(session, shapes, settings.batch) for session in opened]
    return measure_opened(opened, feeds, len(models), settings.clock, tolerance, max_seconds)


def measure_opened(opened: list, feeds: list[dict], models: int, clock: str, tolerance: float = 0.01,
                   max_seconds: float = 10.0, paired: bool = False) -> list[Measurement]:
    """`measure_models` on sessions already open: session i runs model i % `models`. Every model
    after the first gets its paired share of the first's time on the wall clock, and on the CPU clock
    too when `paired`."""
    model_of = [index % models for index in range(len(opened))]
    paired = (paired or clock == "wall") and models > 1
    per_session, turns = measure_sessions(opened, feeds, clock, tolerance, max_seconds=max_seconds,
                                          model_of=model_of if paired else None)
    shares = paired_shares(turns, model_of) if paired else {}
    measured = []
    for index in range(models):
        own = per_session[index::models]
        median, noise = _pooled([m.median_s for m in own], [m.noise for m in own])
        measurement = Measurement(median, noise, sum(m.runs for m in own), clock)
        session_shares = [median_noise(shares[s]) for s in range(index, len(opened), models) if s in shares]
        if index > 0 and session_shares:
            measurement.ratio, measurement.ratio_noise = _pooled([r for r, _ in session_shares],
                                                                 [n for _, n in session_shares])
        measured.append(measurement)
    return measured


def profile_nodes(model: onnx.ModelProto | Path, settings: LatencySettings, shapes: dict, runs: int = 6,
                  warmup_s: float = 0.3) -> list[tuple[str, str, float]]:
    """(node name, op type, kernel seconds) of every node of the optimized graph onnxruntime runs, in
    execution order, from its profiler: the fastest of `runs` runs, after warm-up runs (at least 3
    and `warmup_s`: a fresh session's first runs touch its weights for the first time)."""
    with tempfile.TemporaryDirectory(prefix="morphnet-profile-") as folder:
        session = timing_session(model, settings, profile_dir=folder)
        feeds = timing_feeds(session, shapes, settings.batch)
        skip, start = 0, time.perf_counter()
        while skip < 3 or time.perf_counter() - start < warmup_s:
            _run(session, feeds)
            skip += 1
        for _ in range(runs):
            _run(session, feeds)
        trace = session.end_profiling()
        try:
            events = json.loads(Path(trace).read_text())
        finally:
            if os.path.exists(trace):
                os.remove(trace)
    durations: dict[str, list[float]] = {}
    op_types: dict[str, str] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        op_types.setdefault(node, event.get("args", {}).get("op_name", ""))
        durations.setdefault(node, []).append(float(event.get("dur", 0.0)) * 1e-6)
    # The fastest run of each kernel: a run the machine's other work did not interrupt.
    return [(node, op_types[node], float(np.min(values[skip:] if len(values) > skip else values)))
            for node, values in durations.items()]
