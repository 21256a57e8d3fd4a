#!/usr/bin/env python3
"""Zoo sweep: run `morphnet-onnx check` over many models (DEV-ONLY tool; results go in docs/coverage.md).

For every model, `check` runs at each fraction (default 0.5 and 1.0, seed 0) in its own subprocess::

    <python> -m morphnet_onnx.cli check MODEL --fraction F --seed 0 --json

so that a crash, a hang or an out-of-memory kill of one model cannot stop the sweep (timeout per
run, default 600 s). Exit codes of the child: 0 passed, 1 with a JSON document on stdout = check
FAILED, 2 = bad input or unsupported model (one line on stderr), anything else (or 1 without JSON,
the CLI's "internal error") = crash.

Model sources (combine freely; each file is run once):

* ``--light``: the onnx wheel's light CNNs (``<site-packages>/onnx/backend/test/data/light/light_*.onnx``);
* ``--torchvision-light``: the committed graph-only exports ``tests/data/torchvision/*.onnx``
  (placeholder weights; ``check`` makes random weights for them);
* ``--dir DIR`` (repeatable): every ``.onnx`` in DIR, e.g. ``~/.cache/morphnet-onnx/torchvision`` (real
  torchvision exports made by ``tools/export_torchvision.py``: ``{model}_bn.onnx`` keeps
  BatchNormalization, ``{model}_folded.onnx`` has it folded into Conv);
* positional ``MODEL`` paths.

``--snapshot[=REV]`` runs the package as committed at REV (default HEAD; ``git archive`` into a
temporary folder, used as the children's working directory so that its ``morphnet_onnx`` is the one
imported) instead of the working tree, whose files may change while a long sweep runs.

Run from the repository root with the project's venv::

    .venv/bin/python tools/zoo_check.py --snapshot --sensitivity --dir ~/.cache/morphnet-onnx/torchvision \
        --markdown /tmp/tv.md --json /tmp/tv.json
    .venv/bin/python tools/zoo_check.py --light --markdown /tmp/light.md
    .venv/bin/python tools/zoo_check.py --dir ~/.cache/morphnet-onnx/torchvision --models 'resnet|vgg' --timeout 300

``--sensitivity`` adds, for every run, a second child that rebuilds check's gated model (same fraction
and seed) and compares its outputs for two different random inputs with check's own error measure
(``max |y1 - y2| / (atol * max(1, max|y1|) + rtol * |y1|)``, atol 1e-4, rtol 1e-3). A value <= 1
means the outputs for two different inputs would pass as equal: the data path does not reach the
model output (dead or vanishing signal, e.g. randomly initialized weights), and that run's pass
proves little. It uses ``morphnet_onnx.surgery.checking``'s public helpers (``random_structure``, ``zero_gates``,
``check_batch``).

The Markdown table is printed at the end (and written with ``--markdown``); ``--json`` writes every
run's parsed result, return code, error line (the last line on stderr), wall time and peak memory.
Both files are rewritten after every model, so a sweep that is interrupted keeps what it had.
Progress goes to stderr.

Exit status: 0 when every model passed at every fraction, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from morphnet_onnx.report.tables import human

REPO = Path(__file__).resolve().parent.parent
MAX_NOTE = 160


# ---------------------------------------------------------------------------- model discovery

def light_dir() -> Path:
    import onnx  # only to find the wheel

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@dataclass
class Model:
    path: Path
    name: str
    variant: str


def describe(path: Path, source: str) -> Model:
    stem = path.stem
    if source == "light":
        return Model(path, stem.removeprefix("light_"), "onnx light")
    if source == "torchvision-light":
        base, _, suffix = stem.rpartition("_")
        if base and suffix in ("bn", "folded"):
            return Model(path, base, f"{suffix} (graph only)")
        return Model(path, stem, "graph only")
    base, _, suffix = stem.rpartition("_")
    if base and suffix in ("bn", "folded"):
        return Model(path, base, suffix)
    return Model(path, stem, "-")


def collect(args: argparse.Namespace) -> list[Model]:
    found: list[Model] = []
    if args.light:
        found += [describe(p, "light") for p in sorted(light_dir().glob("light_*.onnx"))]
    if args.torchvision_light:
        folder = REPO / "tests" / "data" / "torchvision"
        found += [describe(p, "torchvision-light") for p in sorted(folder.glob("*.onnx"))]
    for folder in args.dir or []:
        folder = Path(folder)
        if not folder.is_dir():
            sys.exit(f"zoo_check: --dir {folder}: not a folder")
        found += [describe(p, "dir") for p in sorted(folder.glob("*.onnx"))]
    for item in args.model:
        found.append(describe(Path(item), "file"))
    seen, unique = set(), []
    for m in found:
        key = m.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(m)
    if args.models:
        pattern = re.compile(args.models)
        unique = [m for m in unique if pattern.search(m.path.name)]
    return unique


# ---------------------------------------------------------------------------- one run

@dataclass
class Run:
    fraction: float
    status: str  # pass, FAIL, unsupported, crash, timeout
    returncode: int | None
    wall_s: float
    peak_rss_mb: float | None
    result: dict | None = None
    error: str = ""  # stderr (last line) for unsupported/crash, or the reason for a FAIL
    probe: dict | None = None  # --sensitivity: {"sensitivity", "output_spread", "output_max_abs"} or {"error"}

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def run_check(path: Path, fraction: float, seed: int, timeout: float, extra: list[str], root: Path) -> Run:
    cmd = [sys.executable, "-m", "morphnet_onnx.cli", "check", str(path.resolve()), "--fraction", repr(fraction),
           "--seed", str(seed), "--json", *extra]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        # cwd is the first entry of the child's sys.path (`-m`): the morphnet_onnx package under
        # `root` is the one imported, whatever the venv's editable install points at.
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=root,
                                start_new_session=True)
        status_word, rusage, timed_out = None, None, False
        try:
            while True:
                pid, status_word, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - start > timeout:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status_word, rusage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
        except BaseException:  # interrupted or killed ourselves: take the child down too
            try:
                os.killpg(proc.pid, signal.SIGKILL)
                os.waitpid(proc.pid, 0)
            except OSError:
                pass
            proc.returncode = -9
            raise
        wall = time.perf_counter() - start
        rc = os.waitstatus_to_exitcode(status_word)
        proc.returncode = rc  # already reaped: keep Popen from waiting again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    peak = rusage.ru_maxrss / 1024 if rusage is not None else None  # Linux: KiB
    last_err = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    if timed_out:
        return Run(fraction, "timeout", None, wall, peak, error=f"timeout after {timeout:.0f} s")
    parsed = None
    for line in reversed(stdout.strip().splitlines()):
        try:
            parsed = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if rc == 0 and parsed is not None:
        return Run(fraction, "pass" if parsed.get("passed") else "FAIL", rc, wall, peak, parsed)
    if rc == 1 and parsed is not None:
        return Run(fraction, "FAIL", rc, wall, peak, parsed, error=f"max_error {parsed.get('max_error'):.3g} > 1")
    if rc == 2:
        return Run(fraction, "unsupported", rc, wall, peak, error=last_err.removeprefix("morphnet-onnx: error: "))
    if rc < 0:
        last_err = f"killed by signal {-rc}" + (f" ({last_err})" if last_err else "")
    return Run(fraction, "crash", rc, wall, peak, parsed,
               error=(last_err or f"exit code {rc}").removeprefix("morphnet-onnx: "))


# ---------------------------------------------------------------------------- input sensitivity

# Run in a child (cwd = the package root, like the checks). It rebuilds check's gated model (same
# fraction and seed, so the same random structure), runs it on check's random input (seed) and on a
# second random input (seed + 1), and measures the difference of the two outputs with check's own
# error measure. Below 1, the outputs for two different inputs would pass the check as "equal": the
# comparison cannot see the data path at the model output (only constants reach it), so a pass says
# little about exactness. Uses morphnet_onnx.surgery.checking's public helpers (random_structure, zero_gates, check_batch).
PROBE = r"""
import json, sys
import numpy as np
from morphnet_onnx.surgery.pruning import prepare
from morphnet_onnx import checking
from morphnet_onnx.loading.runtime import make_session, random_feeds
path, fraction, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
atol, rtol = 1e-4, 1e-3
loaded, analysis = prepare(path, None, None, seed=seed)
structure = checking.random_structure(loaded, analysis, fraction, seed)
gated = checking.zero_gates(loaded.model, loaded, analysis, structure)
batch = checking.check_batch(loaded)
session = make_session(gated)
ref = session.run(None, random_feeds(loaded.model, loaded.shapes, batch, seed))
other = session.run(None, random_feeds(loaded.model, loaded.shapes, batch, seed + 1))
worst, spread, scale_max = 0.0, 0.0, 0.0
for a, b in zip(other, ref):
    if not b.size:
        continue
    scale = max(1.0, float(np.max(np.abs(b))))
    diff = np.abs(a.astype(np.float64) - b)
    worst = max(worst, float(np.max(diff / (atol * scale + rtol * np.abs(b)))))
    spread = max(spread, float(np.max(diff)))
    scale_max = max(scale_max, float(np.max(np.abs(b))))
print(json.dumps({"sensitivity": worst, "output_spread": spread, "output_max_abs": scale_max}))
"""


def run_probe(path: Path, fraction: float, seed: int, timeout: float, root: Path) -> dict:
    cmd = [sys.executable, "-c", PROBE, str(path.resolve()), repr(fraction), str(seed)]
    try:
        done = subprocess.run(cmd, check=False, cwd=root, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in reversed(done.stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    last = next((line for line in reversed(done.stderr.strip().splitlines()) if line.strip()), "")
    return {"error": last or f"exit code {done.returncode}"}


# ---------------------------------------------------------------------------- report

def suspicious(runs: list[Run]) -> list[str]:
    """Things that passed but look wrong."""
    found = []
    for r in runs:
        res = r.result
        if not res or r.status != "pass" or r.fraction <= 0:
            continue
        tag = f"f={r.fraction:g}"
        if res["groups_pruned"] == 0:
            found.append(f"{tag}: nothing pruned")
        elif res["flops_after"] >= res["flops_before"] and res["prunable_flops_share"] > 0:
            found.append(f"{tag}: FLOPs not reduced")
        if res["groups_pruned"] and res["max_error"] == 0 and r.fraction < 1.0:
            found.append(f"{tag}: max_error exactly 0")
    return found


@dataclass
class Row:
    model: Model
    runs: list[Run] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.runs) and all(r.status == "pass" for r in self.runs)

    def run(self, fraction: float) -> Run | None:
        return next((r for r in self.runs if r.fraction == fraction), None)

    def to_dict(self) -> dict:
        return {"model": self.model.name, "variant": self.model.variant, "path": str(self.model.path),
                "file_mb": round(self.model.path.stat().st_size / 2**20, 1) if self.model.path.exists() else None,
                "passed": self.passed, "suspicious": suspicious(self.runs),
                "runs": [r.to_dict() for r in self.runs]}


def cell_status(run: Run | None) -> str:
    if run is None:
        return "-"
    return {"pass": "yes", "FAIL": "**FAIL**", "unsupported": "unsupported", "crash": "**crash**",
            "timeout": "**timeout**"}[run.status]


def escape(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= MAX_NOTE else text[: MAX_NOTE - 1] + "…"


def notes_cell(row: Row) -> str:
    parts = []
    for r in row.runs:
        if r.status != "pass":
            parts.append(f"f={r.fraction:g} {r.status}: {r.error}")
    parts += [f"suspicious {s}" for s in suspicious(row.runs)]
    for r in row.runs:
        if r.probe and "error" in r.probe:
            parts.append(f"f={r.fraction:g} sensitivity probe error: {r.probe['error']}")
    seen = []
    for r in row.runs:
        for note in (r.result or {}).get("notes", []):
            if note not in seen:
                seen.append(note)
    if seen:
        parts.append(f"{len(seen)} note(s): " + "; ".join(seen))
    return escape("; ".join(parts)) if parts else ""


def probe_cell(run: Run | None) -> str:
    if run is None or run.probe is None:
        return "-"
    if "error" in run.probe:
        return "error"
    return f"{run.probe['sensitivity']:.2g}"


def markdown(rows: list[Row], fractions: list[float]) -> str:
    f_lo, f_hi = fractions[0], fractions[-1]
    probed = any(r.probe is not None for row in rows for r in row.runs)
    head = ["model", "variant"] + [f"passed {f:g}" for f in fractions] + [
        "prunable FLOPs", f"FLOPs before -> after {f_lo:g}", f"groups pruned/removed {f_hi:g}",
        "max error " + " / ".join(f"{f:g}" for f in fractions)] + (
        ["input sensitivity " + " / ".join(f"{f:g}" for f in fractions)] if probed else []) + [
        "seconds " + " + ".join(f"{f:g}" for f in fractions), "notes"]
    align = ["---", "---"] + [":-:"] * len(fractions) + ["--:"] * (5 + probed) + ["---"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lo, hi = row.run(f_lo), row.run(f_hi)
        any_res = next((r.result for r in row.runs if r.result), None)
        share = f"{any_res['prunable_flops_share']:.1%}" if any_res else "-"
        flops = (f"{human(lo.result['flops_before'])} -> {human(lo.result['flops_after'])}"
                 if lo and lo.result else "-")
        groups = f"{hi.result['groups_pruned']}/{hi.result['groups_removed']}" if hi and hi.result else "-"
        errs = " / ".join(f"{r.result['max_error']:.2g}" if r and r.result else "-" for r in map(row.run, fractions))
        secs = " + ".join(f"{r.wall_s:.1f}" if r else "-" for r in map(row.run, fractions))
        sens = [" / ".join(probe_cell(row.run(f)) for f in fractions)] if probed else []
        cells = [row.model.name, row.model.variant] + [cell_status(row.run(f)) for f in fractions] + [
            share, flops, groups, errs] + sens + [secs, notes_cell(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_line(rows: list[Row], fractions: list[float]) -> str:
    per_fraction = ", ".join(f"{sum(1 for r in rows if (x := r.run(f)) and x.status == 'pass')} at {f:g}"
                             for f in fractions)
    counts: dict[str, int] = {}
    for row in rows:
        for r in row.runs:
            if r.status != "pass":
                counts[r.status] = counts.get(r.status, 0) + 1
    bad = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    total = sum(r.wall_s for row in rows for r in row.runs)
    blind = ""
    if any(r.probe is not None for row in rows for r in row.runs):
        blind = "; input sensitivity <= 1 (output blind to the input) in " + ", ".join(
            f"{sum(1 for row in rows if (x := row.run(f)) and x.probe and x.probe.get('sensitivity', 2) <= 1)} at {f:g}"
            for f in fractions)
    return (f"{sum(r.passed for r in rows)} of {len(rows)} models passed at every fraction ({per_fraction})"
            + (f"; failed runs: {bad}" if bad else "") + blind + f"; {total / 60:.1f} min of checks")


def make_snapshot(rev: str = "HEAD") -> tuple[Path, str]:
    """The package as committed at `rev`, in a temporary folder (uncommitted edits left out)."""
    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], check=False, cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"zoo_check: --snapshot {rev}: not a commit (write --snapshot=REV, or put MODEL paths first)")
    commit = done.stdout.strip()
    folder = Path(tempfile.mkdtemp(prefix=f"zoo_check_{commit[:7]}_"))
    archive = subprocess.run(["git", "archive", commit, "morphnet_onnx"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder, commit


def environment() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    versions = {}
    for mod in ("onnx", "onnxruntime", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_in_morphnet_onnx": bool(git("status", "--porcelain", "--", "morphnet_onnx")),
            "uncommitted_changes_used": bool(git("status", "--porcelain", "--", "morphnet_onnx")),
            "python": platform.python_version(), "cpus": os.cpu_count(), **versions}


def write_outputs(args, rows: list[Row], fractions: list[float], env: dict, argv: list[str]) -> str:
    table = markdown(rows, fractions)
    line = summary_line(rows, fractions)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n\n" + line + "\n")
    if args.json:
        doc = {"command": argv, "environment": env, "fractions": fractions, "seed": args.seed,
               "timeout_s": args.timeout, "summary": line, "models": [r.to_dict() for r in rows]}
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return table + "\n\n" + line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="*", help="extra .onnx files")
    parser.add_argument("--light", action="store_true", help="the onnx wheel's light_*.onnx CNNs")
    parser.add_argument("--torchvision-light", action="store_true", help="tests/data/torchvision/*.onnx (graph only)")
    parser.add_argument("--dir", action="append", metavar="DIR", help="every .onnx in DIR (repeatable)")
    parser.add_argument("--models", metavar="REGEX", help="only files whose name matches (re.search)")
    parser.add_argument("--fractions", default="0.5,1.0", help="comma-separated (default 0.5,1.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per check run (default 600)")
    parser.add_argument("--markdown", metavar="OUT.md", help="write the table and summary line")
    parser.add_argument("--json", metavar="OUT.json", help="write every run's details")
    parser.add_argument("--snapshot", nargs="?", const="HEAD", metavar="REV",
                        help="run morphnet_onnx as committed at REV (default HEAD; git archive to a temporary "
                             "folder), not the working tree: uncommitted edits cannot change results mid-sweep")
    parser.add_argument("--sensitivity", action="store_true",
                        help="also measure, per run, how much the gated model's output depends on its input "
                             "(check's error measure between two random inputs; <= 1: the check is blind)")
    parser.add_argument("--check-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for every check run, e.g. --check-arg=--input-shape=1x3x224x224")
    args = parser.parse_args(argv)

    fractions = [float(x) for x in args.fractions.split(",") if x.strip()]
    models = collect(args)
    if not models:
        parser.error("no models: give --light, --torchvision-light, --dir DIR or MODEL paths")
    env = environment()
    root = REPO
    if args.snapshot:
        root, commit = make_snapshot(args.snapshot)
        env["snapshot"] = str(root)
        env["commit"] = commit[:7]
        env["uncommitted_changes_used"] = False
        print(f"zoo_check: running morphnet_onnx as committed at {commit[:7]}, copied to {root}",
              file=sys.stderr, flush=True)
    dirty = " (+uncommitted morphnet_onnx changes)" if env["uncommitted_in_morphnet_onnx"] and not args.snapshot else ""
    print(f"zoo_check: {len(models)} models x fractions {fractions}, seed {args.seed}, timeout {args.timeout:g} s; "
          f"commit {env['commit']}{dirty}", file=sys.stderr, flush=True)
    rows: list[Row] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # kill PID: the running child goes too
    try:
        sweep(args, models, fractions, env, argv, root, rows)
    finally:
        if args.snapshot:
            shutil.rmtree(root, ignore_errors=True)
    print(write_outputs(args, rows, fractions, env, argv))
    return 0 if all(r.passed for r in rows) else 1


def sweep(args, models: list[Model], fractions: list[float], env: dict, argv: list[str], root: Path,
          rows: list[Row]) -> None:
    for i, model in enumerate(models, 1):
        row = Row(model)
        rows.append(row)
        for fraction in fractions:
            run = run_check(model.path, fraction, args.seed, args.timeout, args.check_arg, root)
            row.runs.append(run)
            rss = f", peak {run.peak_rss_mb:.0f} MB" if run.peak_rss_mb else ""
            detail = f" ({run.error})" if run.error else ""
            if args.sensitivity and run.result is not None:
                run.probe = run_probe(model.path, fraction, args.seed, args.timeout, root)
                detail += (f", sensitivity {run.probe['sensitivity']:.3g}" if "sensitivity" in run.probe
                           else f", probe error: {run.probe['error']}")
            print(f"[{i}/{len(models)}] {model.path.name} f={fraction:g}: {run.status}{detail}, "
                  f"{run.wall_s:.1f} s{rss}", file=sys.stderr, flush=True)
        write_outputs(args, rows, fractions, env, argv)


if __name__ == "__main__":
    sys.exit(main())
