"""The command line: one parser per command, the options users share defined once as argument groups
(model, data, training, budget, MorphNet method, output), every default shown in `--help`, an
example line per command."""

from __future__ import annotations

import argparse

from .. import __version__
from .commands import COMMANDS

DESCRIPTION = "MorphNet for ONNX: find prunable channel groups, check surgery, prune to a learned structure."
EXAMPLES = {
    "inspect": "morphnet-onnx inspect resnet50.onnx --hardware T4",
    "diff": "morphnet-onnx diff resnet50.onnx small.onnx --html diff.html",
    "prune": "morphnet-onnx prune resnet50.onnx --structure s.json -o small.onnx",
    "check": "morphnet-onnx check resnet50.onnx --fraction 1.0",
    "shrink": "morphnet-onnx shrink model.onnx --data train.npz --val val.npz --budget-flops 0.5x -o small.onnx",
    "expand": "morphnet-onnx expand small.onnx --budget-flops 1.0x --reference model.onnx -o wide.onnx",
    "cycle": "morphnet-onnx cycle model.onnx --data train.npz --val val.npz --budget-flops 1.0x --out-dir runs",
    "train": "morphnet-onnx train model.onnx --data train.npz --val val.npz --steps 2000 -o trained.onnx",
    "evaluate": "morphnet-onnx evaluate trained.onnx --data val/  (a folder of class folders, or val.npz)",
}


REGULARIZERS = ["auto", "gamma", "group-lasso", "figs"]


GROUPINGS = ["max", "l2"]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, where it has one the help does not already say."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if action.option_strings and not unset and "(default" not in text:
            text += " (default: %(default)s)"
        return text


def _command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=summary, formatter_class=_HelpFormatter,
                       epilog=f"example:\n  {EXAMPLES[name]}")
    p.set_defaults(run=COMMANDS[name])
    return p


def _model_options(p: argparse.ArgumentParser, keep: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("model", help="the .onnx file")
    g.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224",
                   help="static shape of an input with symbolic dims (repeatable; batch counts as 1)")
    if keep:
        g.add_argument("--keep", action="append", metavar="REGEX",
                       help="never prune the channels of ops whose name matches (repeatable)")


def _recipe_options(p: argparse.ArgumentParser) -> None:
    """shrink's recipe (recipes/options.py; each default there, and tests/test_cli.py checks they agree)."""
    g = p.add_argument_group("recipe (docs/training.md, \"The recipe\"); --steps/--epochs are the whole run")
    g.add_argument("--cut", choices=["budget", "end"], default="budget",
                   help="when the model is cut: as soon as the learned structure meets the budget (the rest of "
                        "the steps train the smaller model), or after the regularized share of the steps")
    g.add_argument("--hold", action=argparse.BooleanOptionalAction, default=True,
                   help="bring the structure down to the budget progressively, holding removed channels at zero")
    g.add_argument("--hold-from", type=float, default=0.1, metavar="F", help="share of the steps where --hold starts")
    g.add_argument("--hold-until", type=float, default=0.4, metavar="F",
                   help="share of the steps by which --hold reaches the budget")
    g.add_argument("--proximal", action=argparse.BooleanOptionalAction, default=False,
                   help="apply the regularizer as a proximal step on the gates (they reach exactly zero) "
                        "instead of through the loss's gradient")
    g.add_argument("--reach", type=float, default=0.5 / 1.1, metavar="F",
                   help="share of the steps within which the regularizer's strength may grow 1000-fold")
    g.add_argument("--finetune-steps", type=int, metavar="N",
                   help="steps of plain training after the cut, out of --steps (default: --finetune-share of "
                        "them, at least; 0: write the model as cut)")
    g.add_argument("--finetune-share", type=float, default=0.3, metavar="F",
                   help="share of the steps kept for training the cut model, at least")
    g.add_argument("--finetune-lr", type=float, metavar="F",
                   help="the learning rate after the cut, as a share of --lr (default 1.0; a family's members' "
                        "fine-tunes have their own, docs/training.md)")
    g.add_argument("--finetune-schedule", choices=["cosine", "continue"], default="continue",
                   help="after the cut: cosine from that rate, or the run's schedule continued where the cut "
                        "interrupted it")
    g.add_argument("--distill", choices=["auto", "on", "off"], default="auto",
                   help="learn from the input model's predictions too (auto: when it scores at least halfway "
                        "from chance to 100%% on the training data)")
    g.add_argument("--distill-weight", type=float, default=0.5, metavar="W",
                   help="share of the loss that is distillation")
    g.add_argument("--distill-temperature", type=float, default=4.0, metavar="T",
                   help="softening of both distributions")


def _output_options(p: argparse.ArgumentParser, model: bool = True, structure: str | None = None,
                    pictures: bool = True, json_help: str | None = "print one JSON document instead of tables") -> None:
    g = p.add_argument_group("output")
    if model:
        g.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the model")
    if structure:
        g.add_argument("--save-structure", metavar="S.json", help=structure)
    if json_help:
        g.add_argument("--json", action="store_true", help=json_help)
    if pictures:
        g.add_argument("--plot", metavar="FILE.png|FILE.svg",
                       help="per-layer widths and FLOPs before and after (needs the extra `plot`: matplotlib)")
        g.add_argument("--html", metavar="FILE.html",
                       help="one self-contained page: totals, the plot, the topology with removed ops marked, "
                            "every op")


def _budget_options(p: argparse.ArgumentParser, strength: bool = False, multiplier: bool = False,
                    family: bool = False) -> None:
    title = "budget (one of; several of one resource, 0.75x,0.5x,0.25x: a family of models from one run)" \
        if family else "budget (one of)"
    g = p.add_argument_group(title).add_mutually_exclusive_group(required=True)
    g.add_argument("--budget-flops", metavar="0.5x|2.1G", help="target FLOPs, relative (0.5x) or absolute")
    g.add_argument("--budget-size", metavar="0.5x|1.2M", help="target weight count, relative or absolute")
    g.add_argument("--budget-latency", metavar="0.5x|1.2ms",
                   help="target latency: the roofline of --hardware, or measured with --hardware measure")
    if strength:
        g.add_argument("--strength", type=float, metavar="LAMBDA", help="manual mode: fixed regularization strength")
    if multiplier:
        g.add_argument("--multiplier", type=float, metavar="M",
                       help="one width multiplier for every prunable group (the uniform baseline: on the original)")


def _roofline_options(g, purpose: str = "for --budget-latency") -> None:
    g.add_argument("--hardware", metavar="NAME|PEAK/BW|measure",
                   help=f"latency {purpose}: a roofline (K80, P4, T4, P100, V100 (default), TPUv2, or "
                        f"PEAK_GFLOPS/BANDWIDTH_GBS), or measure: time the model in onnxruntime with --provider, "
                        f"--latency-threads and --cost-batch-size (a table, cached)")
    g.add_argument("--cost-batch-size", type=int, default=1, metavar="B",
                   help="batch of the latency roofline or measurement (FLOPs and parameters stay per example; a model "
                        "exported with a fixed batch is measured at it)")
    g.add_argument("--provider", default="CPUExecutionProvider", metavar="NAME",
                   help="--hardware measure: the onnxruntime execution provider to time on")
    g.add_argument("--latency-threads", type=int, default=0, metavar="N",
                   help="--hardware measure: onnxruntime intra-op threads (0: its default, one per physical core)")
    g.add_argument("--latency-table", metavar="TABLE.json",
                   help="--hardware measure: read the measured table from this file, or write it there "
                        "(implies --hardware measure)")


DATA_HELP = ("an .npz (one array per model input, or x, plus labels), a folder of such .npy files, or a folder "
             "of class folders of PNG/JPEG images (torchvision's ImageFolder)")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas, e.g. 0.5 or 0.485,0.456,0.406")


def _image_options(g, augment: bool) -> None:
    """How image folders are read: shared by the training commands and evaluate."""
    g.add_argument("--mean", type=_floats, metavar="M[,M,M]",
                   help="image folders: per-channel mean of pixels in [0, 1] (default: ImageNet's "
                        "0.485,0.456,0.406 for 3-channel inputs, 0.5 for 1-channel inputs)")
    g.add_argument("--std", type=_floats, metavar="S[,S,S]",
                   help="image folders: per-channel standard deviation (default: ImageNet's 0.229,0.224,0.225 "
                        "for 3 channels, 0.5 for 1)")
    if augment:
        g.add_argument("--no-augment", action="store_true",
                       help="image folders: no random crop (50-100%% of the area) and flip on --data (--val never has them)")
    g.add_argument("--data-workers", type=int, default=2, metavar="N",
                   help="image folders: threads decoding ahead of training (2 x N batches at most)")


def _training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="TRAIN.npz|DIR", help=DATA_HELP)
    g.add_argument("--data-module", metavar="pkg.mod:fn", help="a function returning an iterable of batches")
    g.add_argument("--val", metavar="VAL.npz|DIR", help="validation data, as --data (accuracy printed at the end)")
    g.add_argument("--loss", choices=["ce", "mse"], default="ce", help="cross-entropy on logits, or mean squared error")
    _image_options(g, augment=True)
    g = p.add_argument_group("training")
    g.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="the optimizer")
    g.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    g.add_argument("--schedule", choices=["onecycle", "cosine", "constant"], default="onecycle",
                   help="learning-rate schedule over the steps")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="decoupled weight decay")
    g.add_argument("--epochs", type=int, default=15, help="passes over --data (unless --steps)")
    g.add_argument("--steps", type=int, help="stop after this many optimizer steps (instead of --epochs)")
    g.add_argument("--batch-size", type=int, default=64, help="examples per step")
    g.add_argument("--seed", type=int, default=0, help="seed of the data order (and of fresh weights)")
    g.add_argument("--threads", type=int, default=0, help="training threads, onnxruntime's or torch's (0: their default)")
    g.add_argument("--backend", choices=["ort", "torch"], default="ort",
                   help="training engine: onnxruntime-training or torch (extra `torch`; data-parallel under torchrun)")
    g.add_argument("--checkpoint-dir", metavar="DIR", help="save a checkpoint here every --checkpoint-every steps")
    g.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _round_to(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number, or auto") from None


def _method_options(p: argparse.ArgumentParser, grouping_help: str):
    g = p.add_argument_group("MorphNet method")
    g.add_argument("--regularizer", choices=REGULARIZERS, default="auto",
                   help="gamma: L1 on BatchNorm scales; group-lasso: filter RMS (BN folded); auto: by model; "
                        "figs: MorphNet's probabilistic gates (decides on p > 0.5, --threshold unused)")
    g.add_argument("--grouping", choices=GROUPINGS, default="max", help=grouping_help)
    g.add_argument("--round-to", type=_round_to, default=1, metavar="N|auto",
                   help="keep every pruned width a multiple of N; auto: widths the measured latency table "
                        "shows to be fast (with --hardware measure)")
    _roofline_options(g)
    return g


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="morphnet-onnx", description=DESCRIPTION,
                                     epilog="Exit codes: 0 success, 1 check failed or internal error, 2 bad input.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "inspect", "channel groups, what they cost, and what can be pruned")
    _model_options(p)
    p.add_argument("after", nargs="?", metavar="AFTER", help="a second model: what changed (the same as `diff`)")
    _roofline_options(p, "of every op")
    _output_options(p, model=False)

    p = _command(sub, "diff", "what changed between two models, or two structure files of one model")
    p.add_argument("before", help="the original .onnx (or a structure .json)")
    p.add_argument("after", help="the changed .onnx (or a structure .json, applied to --model)")
    p.add_argument("--model", dest="structure_model", metavar="MODEL.onnx",
                   help="the model structure files apply to (default: the .onnx side, else the model the file names)")
    p.add_argument("--input-shape", action="append", metavar="NAME:1x3x224x224",
                   help="static shape of an input with symbolic dims, for both models (repeatable)")
    p.add_argument("--hardware", metavar="NAME|PEAK/BW", help="latency roofline (see inspect; default V100)")
    _output_options(p, model=False)

    p = _command(sub, "prune", "remove the channels a structure file marks dead; write a smaller model")
    _model_options(p)
    p.add_argument("--structure", required=True, metavar="S.json", help="structure file (docs/structure.md)")
    p.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="keep every pruned width a multiple of N (adds the channels with the largest gates)")
    p.add_argument("--approximate-borders", action="store_true",
                   help="remove channels whose constant value a padded conv spreads unevenly, folding the "
                        "interior value into the bias (exact except at the borders; fine-tune afterwards)")
    p.add_argument("--approximate-norms", action="store_true",
                   help="keep a LayerNormalization (or RMSNorm's ReduceMean) over a narrowed width as one op "
                        "over the kept channels, as shrink writes it, instead of written out exactly in many "
                        "ops that run slower (fine-tune afterwards)")
    _output_options(p, structure="also write the structure as applied", json_help=None)

    p = _command(sub, "check", "prove on random data that pruning this model is exact")
    _model_options(p)
    p.add_argument("--fraction", type=float, default=0.5,
                   help="share of every prunable group's channels to remove (1.0 also removes whole branches)")
    p.add_argument("--seed", type=int, default=0, help="seed of the channels removed and of the inputs")
    _output_options(p, model=False, pictures=False, json_help="print one JSON document")

    p = _command(sub, "shrink", "MorphNet: train with the resource regularizer, write the smaller model")
    _model_options(p)
    _training_options(p)
    _budget_options(p, strength=True, family=True)
    g = _method_options(p, "how the gates of a channel written by several ops (a residual stream) combine: max "
                           "(MorphNet's default) or l2 (every member pushed; streams shrink too)")
    g.add_argument("--threshold", type=float, default=1e-2, help="a channel is alive while its gate is above this")
    _recipe_options(p)
    g.add_argument("--force", action="store_true",
                   help="decide a structure even when the training loss never fell (the gates are then noise)")
    _output_options(p, structure="also write the learned structure", json_help="print the summary as one JSON document")
    p.add_argument("--structure", metavar="OUT.json", dest="old_structure", help=argparse.SUPPRESS)

    p = _command(sub, "expand", "scale every prunable width by one multiplier, to a budget; write the model")
    _model_options(p)
    p.add_argument("--structure", metavar="S.json", help="structure of MODEL to expand (default: MODEL as it is)")
    _budget_options(p, multiplier=True)
    p.add_argument("--reference", metavar="ORIGINAL.onnx", help="what a relative budget (1.0x) is of (default: MODEL)")
    p.add_argument("--round-to", type=_round_to, default=1, metavar="N|auto",
                   help="keep every width a multiple of N; auto: widths the measured latency table shows to be "
                        "fast (with --hardware measure)")
    p.add_argument("--init", choices=["fresh", "keep"], default="fresh",
                   help="fresh: every weight re-initialised, for retraining from scratch; keep: only the new "
                        "channels, read with zero weights (the wider model computes what MODEL computes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh weights")
    _roofline_options(p)
    _output_options(p, json_help="print the summary as one JSON document")

    p = _command(sub, "cycle", "MorphNet's recipe: rounds of shrink, expand to the budget, retrain, evaluate")
    _model_options(p)
    _training_options(p)
    _budget_options(p)
    g = _method_options(p, "as for shrink")
    g.add_argument("--rounds", type=int, default=2, help="shrink/expand rounds after the original")
    g.add_argument("--shrink-to", type=float, default=0.5, metavar="F",
                   help="each round shrinks to this share of the budget before expanding back")
    g.add_argument("--force", action="store_true", help="let shrink decide even when its training loss never fell")
    p.add_argument("--out-dir", required=True, metavar="DIR",
                   help="every round's models and structure, checkpoints and the table (cycle.json)")
    _output_options(p, model=False, json_help="print the table as one JSON document")

    p = _command(sub, "train", "plain training (no regularizer): the baseline for MorphNet results")
    _model_options(p)
    _training_options(p)
    p.add_argument("--init", choices=["keep", "fresh"], default="keep",
                   help="keep: train from the model's weights; fresh: re-initialise every weight first "
                        "(retrain from scratch)")
    _output_options(p, pictures=False, json_help="print the summary as one JSON document")

    p = _command(sub, "evaluate", "top-1/top-5 accuracy (or mse) with onnxruntime")
    _model_options(p, keep=False)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="VAL.npz|DIR", help=DATA_HELP)
    g.add_argument("--loss", choices=["ce", "mse"], default="ce", help="accuracy (ce) or mean squared error")
    g.add_argument("--batch-size", type=int, default=256, help="examples per onnxruntime run")
    _image_options(g, augment=False)
    _output_options(p, model=False, pictures=False, json_help="print one JSON document")
    return parser
