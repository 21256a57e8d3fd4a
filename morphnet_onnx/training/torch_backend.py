"""The `torch` backend (the optional extra `torch`): the user's graph converted to a torch module by
onnx2torch, MorphNet's regularizer written in torch from the same per-channel weights, trained
weights handed back by their ONNX names. Under torchrun it trains data-parallel
(DistributedDataParallel: NCCL on GPUs, gloo on CPUs), each rank on its share of the global batch.

What the two backends share, so that one step gives the same loss and weights (tests/test_torch_backend.py):
- the model: the user's graph with its weights (Constant-held weights made initializers), the batch
  static, the logits read before a trailing Softmax; BatchNormalization normalises with batch
  statistics while training (the running statistics are measured again afterwards, as with ort);
- the trainable set: the slots of ops.TRAINABLE_INPUTS (and FiGS's gate logits), nothing else;
- the loss: mean cross-entropy (or mse) + sum(cost weights x regularization vector), the vector
  computed as regularizers.add_regularizer's ONNX subgraph computes it;
- the optimizers: onnxruntime-training's AdamW (its `adam_mode` 1, Hugging Face's formula: bias
  correction folded into the step size, epsilon outside the square root, decoupled weight decay
  applied after the step) and plain SGD without momentum or weight decay.

A weight that several ops share is trained as one tensor here (ort trains untied copies and writes
the first copy back); loading unties the common case (shared norm parameters) before either runs.
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import torch  # this module is imported only for --backend torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import fx, nn

from ..errors import MorphNetError
from ..figs import NOISE, GatePlacement, insert_gates
from ..graph_utils import drop_dead_nodes
from ..io import LoadedModel, graph_input_names
from ..ops import BUFFER_INPUTS, TRAINABLE_INPUTS
from ..regularizers import EPS, GroupRegularizer
from .backend import COST_WEIGHTS, TEACHER, Distill, StepOutput, logits_of
from .distributed import World
from .graph import constants_to_initializers

CONVERTER = "onnx2torch==1.5.15"  # what `pip install morphnet-onnx[torch]` installs, and was tested


def _onnx2torch_convert():
    """onnx2torch's `convert`. onnx2torch imports torchvision at import time for its NMS and RoIAlign
    converters only (detection heads, never in the CNNs we train). Where torchvision is missing or
    cannot load (a CUDA torchvision wheel beside a CPU torch: "operator torchvision::nms does not
    exist"), a stand-in lets onnx2torch import; converting a model with those two ops then fails
    with a one-line error."""
    try:
        importlib.import_module("torchvision")  # optional: only onnx2torch's detection converters use it
    except Exception:  # ImportError, or RuntimeError/OSError from a wheel built for another torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]

        def missing(*args, **kwargs):
            raise MorphNetError("this model has NonMaxSuppression or RoiAlign, which need a working torchvision "
                                "matching your torch (pip install torchvision)")

        stand_in = types.ModuleType("torchvision")
        stand_in.ops = types.ModuleType("torchvision.ops")
        stand_in.ops.nms = stand_in.ops.batched_nms = stand_in.ops.roi_align = missing
        sys.modules["torchvision"] = stand_in
        sys.modules["torchvision.ops"] = stand_in.ops
    try:
        from onnx2torch import convert  # the optional converter of the `torch` extra
    except ImportError as exc:
        raise MorphNetError(f"--backend torch needs onnx2torch: pip install 'morphnet-onnx[torch]' "
                            f"(or pip install {CONVERTER})") from exc
    return convert


# ---- the model ---------------------------------------------------------------------------------------

def torch_graph(loaded: LoadedModel, batch: int, task: str, regs: list[GroupRegularizer],
                gates: list[GatePlacement]) -> tuple[onnx.ModelProto, list[str]]:
    """The ONNX graph that is converted, and the names of its trainable initializers (the user's names)."""
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    graph = model.graph
    constants_to_initializers(graph, TRAINABLE_INPUTS, BUFFER_INPUTS)
    if task == "ce":
        logits = logits_of(model)
        if logits != graph.output[0].name:  # train on the logits: the trailing Softmax goes
            del graph.output[:]
            graph.output.append(onnx.helper.make_empty_tensor_value_info(logits))
    drop_dead_nodes(graph)
    for value in graph.input:
        if value.name in set(graph_input_names(model)):
            shape = value.type.tensor_type.shape
            dims = list(loaded.shapes[value.name])
            dims[0] = batch
            del shape.dim[:]
            for d in dims:
                shape.dim.add().dim_value = d
    del graph.value_info[:]
    for output in graph.output:
        output.type.tensor_type.elem_type = output.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
        output.type.tensor_type.ClearField("shape")
    inits = {t.name for t in graph.initializer}
    trainable: list[str] = []
    for node in graph.node:
        for index in TRAINABLE_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] in inits and node.input[index] not in trainable:
                trainable.append(node.input[index])
    if gates:
        trainable.extend(insert_gates(model, regs, gates))
    return model, trainable


class _Ref:
    """A trainable ONNX initializer inside the torch module: the tensor, and whether the module holds
    it transposed (nn.Linear from a Gemm without transB)."""

    def __init__(self, tensor: torch.Tensor, transposed: bool) -> None:
        self.tensor, self.transposed = tensor, transposed

    def onnx_view(self) -> torch.Tensor:
        """The tensor in the user's layout (differentiable)."""
        return self.tensor.t() if self.transposed else self.tensor


# The attributes of torch modules that onnx2torch fills from an op's initializers, by input slot.
_MODULE_SLOTS: list[tuple[type, dict[int, str]]] = [
    (nn.modules.conv._ConvNd, {1: "weight", 2: "bias"}),
    (nn.modules.batchnorm._BatchNorm, {1: "weight", 2: "bias", 3: "running_mean", 4: "running_var"}),
    (nn.modules.instancenorm._InstanceNorm, {1: "weight", 2: "bias"}),
    (nn.LayerNorm, {1: "weight", 2: "bias"}),
    (nn.Linear, {1: "weight", 2: "bias"}),
]


def _initializer_tensors(gm: fx.GraphModule, model: onnx.ModelProto) -> dict[str, list[tuple[nn.Module, str, bool]]]:
    """Where each ONNX initializer went: (module, attribute, transposed) for every use. onnx2torch
    keeps no such map: it is read from each converted node's onnx_mapping (its ONNX inputs) and the
    fx arguments (initializers passed as buffers of `initializers`), or from the module's own
    parameters (a Conv's weight)."""
    nodes = {node.output[0]: node for node in model.graph.node if node.output}
    inits = {t.name for t in model.graph.initializer}
    where: dict[str, list[tuple[nn.Module, str, bool]]] = {}
    for fx_node in gm.graph.nodes:
        if fx_node.op != "call_module":
            continue
        module = gm.get_submodule(fx_node.target)
        mapping = getattr(module, "onnx_mapping", None)
        if mapping is None or not mapping.outputs or mapping.outputs[0] not in nodes:
            continue
        node = nodes[mapping.outputs[0]]
        values = [v for v in mapping.inputs if v]
        arguments = list(fx_node.args) + list(fx_node.kwargs.values())
        for value, argument in zip(values, arguments):
            if isinstance(argument, fx.Node) and argument.op == "get_attr" and \
                    str(argument.target).startswith("initializers.") and value in inits:
                holder, _, attribute = str(argument.target).rpartition(".")
                where.setdefault(value, []).append((gm.get_submodule(holder), attribute, False))
        inner = module
        if isinstance(module, nn.Sequential):  # a Conv behind an explicit padding module
            inner = next((m for m in reversed(module) if isinstance(m, nn.modules.conv._ConvNd)), module)
        for kind, slots in _MODULE_SLOTS:
            if not isinstance(inner, kind):
                continue
            for slot, attribute in slots.items():
                if slot < len(node.input) and node.input[slot] in inits and getattr(inner, attribute, None) is not None:
                    transposed = kind is nn.Linear and slot == 1 and not _attribute(node, "transB", 0)
                    where.setdefault(node.input[slot], []).append((inner, attribute, transposed))
            break
    return where


def _attribute(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def trainable_refs(gm: fx.GraphModule, model: onnx.ModelProto, trainable: list[str]) -> dict[str, _Ref]:
    """Make every trainable initializer one nn.Parameter (buffers promoted, shared uses tied), check
    it holds the ONNX value, freeze everything else; return the map ONNX name -> tensor."""
    where = _initializer_tensors(gm, model)
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for parameter in gm.parameters():
        parameter.requires_grad_(False)
    refs: dict[str, _Ref] = {}
    for name in trainable:
        uses = where.get(name)
        if not uses:
            raise MorphNetError(f"--backend torch: internal: the converted module holds no tensor for the trained "
                                f"initializer {name!r}")
        if len({transposed for _, _, transposed in uses}) > 1:
            raise MorphNetError(f"--backend torch: the weight {name!r} is used both as a Gemm weight and another "
                                f"way; train this model with --backend ort")
        module, attribute, transposed = uses[0]
        current = getattr(module, attribute)
        parameter = current if isinstance(current, nn.Parameter) else nn.Parameter(current.detach().clone())
        parameter.requires_grad_(True)
        for module, attribute, _ in uses:
            if attribute in module._buffers:
                del module._buffers[attribute]
            if attribute in module._parameters:
                del module._parameters[attribute]
            module.register_parameter(attribute, parameter)
        ref = _Ref(parameter, transposed)
        held = ref.onnx_view().detach().cpu().numpy()
        if held.shape != values[name].shape or not np.array_equal(held, values[name]):
            raise MorphNetError(f"--backend torch: the converted module's tensor for {name!r} does not hold the "
                                f"ONNX initializer (a scaled Gemm?); train this model with --backend ort")
        refs[name] = ref
    return refs


def convert_model(model: onnx.ModelProto, name: str) -> fx.GraphModule:
    convert = _onnx2torch_convert()
    try:
        return convert(model, attach_onnx_mapping=True)
    except MorphNetError:
        raise
    except Exception as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise MorphNetError(f"{name}: onnx2torch cannot convert this model ({text}); train it with --backend ort") \
            from exc


# ---- the regularizer ---------------------------------------------------------------------------------

class TorchRegularizer:
    """regularizers.add_regularizer in torch: the concatenated regularization vector of `regs`."""

    def __init__(self, regs: list[GroupRegularizer], refs: dict[str, _Ref], device: torch.device) -> None:
        self.refs = refs
        self.members = []
        for reg in regs:
            members = []
            for member in reg.members:
                picks = [torch.as_tensor(p, dtype=torch.long, device=device) for p in member.picks]
                mask = None if member.mask.all() else torch.as_tensor(member.mask, dtype=torch.float32, device=device)
                members.append((member, picks, mask))
            self.members.append((reg.grouping, members))

    @staticmethod
    def _combine(parts: list[torch.Tensor], grouping: str) -> torch.Tensor:
        """regularizers.combine in torch."""
        if len(parts) == 1:
            return parts[0]
        if grouping == "l2":
            return torch.sqrt(sum(part * part for part in parts) + EPS)
        vector = parts[0]
        for part in parts[1:]:
            vector = torch.maximum(vector, part)
        return vector

    def _base(self, member) -> torch.Tensor:
        value = self.refs[member.param].onnx_view()
        if member.kind == "gamma":
            return value.abs().reshape(-1)
        if member.kind == "figs":
            return torch.sigmoid(value.reshape(-1))
        rank = value.dim()
        keep = member.layout.out_axis % rank  # the output channels' axis (ops: the weight layout)
        rows = value.movedim(keep, 0).reshape(value.shape[keep], -1)
        return torch.sqrt((rows * rows).sum(dim=1) * (1.0 / max(rows.shape[1], 1)) + EPS)

    def __call__(self) -> torch.Tensor:
        cache: dict[str, torch.Tensor] = {}
        vectors = []
        for grouping, members in self.members:
            parts = []
            for member, picks, mask in members:
                if member.param not in cache:
                    cache[member.param] = self._base(member)
                for pick in picks:
                    picked = cache[member.param][pick]
                    parts.append(picked * mask if mask is not None else picked)
            vectors.append(self._combine(parts, grouping))
        return torch.cat(vectors)


# ---- the optimizer -----------------------------------------------------------------------------------

class OrtAdamW(torch.optim.Optimizer):
    """onnxruntime-training's AdamW (AdamWOptimizer, adam_mode 1: Hugging Face's formula), so that both
    backends run one recipe: m, v updated; p -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps);
    then p -= lr wd p."""

    def __init__(self, params, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-6) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, decay, eps = group["lr"], group["weight_decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["m"], state["v"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                step_size = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
                if decay > 0:
                    p.add_(p, alpha=-lr * decay)


# ---- the session -------------------------------------------------------------------------------------

def _device(world: World) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _start_process_group(world: World, device: torch.device) -> None:
    """torchrun's rendezvous (MASTER_ADDR/MASTER_PORT or --rdzv-endpoint) through the env:// method."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)
    except Exception as exc:
        raise MorphNetError(f"rank {world.rank} of {world.size}: cannot join the {backend} process group "
                            f"({str(exc).splitlines()[0][:200]}); launch with torchrun") from exc


class TorchSession:
    """The converted module, its optimizer and (under torchrun) its DistributedDataParallel wrapper."""

    def __init__(self, loaded: LoadedModel, options, regs: list[GroupRegularizer], gates: list[GatePlacement],
                 target_shape: list[int] | None, world: World, resume_from: Path | None,
                 distill: Distill | None = None) -> None:
        if options.batch_size % world.size:
            raise MorphNetError(f"--batch-size {options.batch_size} is the global batch: it must be a multiple of "
                                f"the {world.size} processes")
        self.options, self.regs, self.world, self.name = options, regs, world, loaded.name
        self.distill = distill
        self.task = options.loss
        self.device = _device(world)
        if options.threads:
            torch.set_num_threads(options.threads)
        local = options.batch_size // world.size
        model, trainable = torch_graph(loaded, local, options.loss, regs, gates)
        self.input_names = graph_input_names(model)
        self.gm = convert_model(model, loaded.name).to(self.device)
        self.refs = trainable_refs(self.gm, model, trainable)
        self.trainable_names = trainable
        self.regularizer = TorchRegularizer(regs, self.refs, self.device) if regs else None
        self.module: nn.Module = self.gm
        if world.distributed:
            _start_process_group(world, self.device)
            if self.device.type == "cuda":  # batch statistics over the global batch, as in one process
                self.gm = nn.SyncBatchNorm.convert_sync_batchnorm(self.gm)
            self.module = nn.parallel.DistributedDataParallel(
                self.gm, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        params = list({id(r.tensor): r.tensor for r in self.refs.values()}.values())
        self.optimizer = (OrtAdamW(params, options.lr, options.weight_decay) if options.optimizer == "adamw"
                          else torch.optim.SGD(params, lr=options.lr))
        if resume_from is not None:
            self._restore(resume_from)

    # -- data
    def _shard(self, value: np.ndarray) -> torch.Tensor:
        """The rank's share of a global batch: examples rank, rank + N, ... (DistributedSampler's
        interleaving, so that the union over ranks is the global batch of one process)."""
        if self.world.distributed:
            value = value[self.world.rank::self.world.size]
        return torch.from_numpy(np.ascontiguousarray(value)).to(self.device)

    def _inputs(self, batch: dict[str, np.ndarray]) -> list[torch.Tensor]:
        tensors = []
        for name in self.input_names:
            if name == NOISE:  # one gate sample per channel, the same on every rank
                tensors.append(torch.from_numpy(np.ascontiguousarray(batch[NOISE])).to(self.device))
            else:
                tensors.append(self._shard(batch[name]))
        return tensors

    def _gather(self, local: torch.Tensor) -> np.ndarray:
        """The global batch's rows back in their order, from every rank's share."""
        if not self.world.distributed:
            return local.detach().cpu().numpy()
        parts = [torch.empty_like(local) for _ in range(self.world.size)]
        dist.all_gather(parts, local.detach().contiguous())
        stacked = torch.stack(parts, dim=1)  # [local, world, ...]: row i of rank r is global row i*N + r
        return stacked.reshape(-1, *local.shape[1:]).cpu().numpy()

    # -- training
    def _task_loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task == "ce":
            return F.cross_entropy(output, labels)
        return torch.mean((output - labels) ** 2)

    def step(self, batch: dict[str, np.ndarray], lr: float) -> StepOutput:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.module.train()
        try:
            output = self.module(*self._inputs(batch))
            task = self._task_loss(output, self._shard(batch["labels"]))
            objective = task
            if self.distill is not None and TEACHER in batch:  # the ort loss block's formula
                d = self.distill
                teacher = self._shard(batch[TEACHER])
                kd = -torch.sum(teacher * F.log_softmax(output / d.temperature, dim=-1), dim=-1).mean()
                objective = (1 - d.weight) * task + d.weight * d.temperature ** 2 * kd
        except RuntimeError as exc:  # a shape the converted graph cannot take, as onnxruntime's probe reports it
            text = (str(exc).strip().splitlines() or ["unknown error"])[0][:300]
            raise MorphNetError(f"{self.name}: torch cannot take a training step: {text}") from exc
        if self.regularizer is not None:
            weights = torch.from_numpy(np.ascontiguousarray(batch[COST_WEIGHTS])).to(self.device)
            if self.world.distributed:  # the controller's decision is rank 0's, on every rank
                dist.broadcast(weights, src=0)
            reg = torch.sum(self.regularizer() * weights)
        else:
            reg = torch.zeros((), device=self.device)
        loss = objective + reg
        stats = torch.stack([loss.detach(), task.detach(), reg.detach()])
        if self.world.distributed:  # the global batch's mean: every rank reports (and judges) the same
            dist.all_reduce(stats)
            stats /= self.world.size
        loss_value, task_value, reg_value = (float(v) for v in stats.cpu())
        logits = self._gather(output) if self.task == "ce" else None
        if math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return StepOutput(loss_value, task_value, reg_value, logits)

    @torch.no_grad()
    def eval_logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.gm.train()  # batch statistics, as trained (running statistics are measured afterwards)
        return self._gather(self.gm(*self._inputs(feeds)))

    def params(self, names: list[str]) -> dict[str, np.ndarray]:
        return {name: self.refs[name].onnx_view().detach().cpu().numpy().copy() for name in names}

    @torch.no_grad()
    def set_params(self, values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            view = self.refs[name].onnx_view()
            view.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(view.device, view.dtype).reshape(view.shape))

    def trainable(self) -> list[str]:
        return list(self.trainable_names)

    # -- checkpoints
    def save(self, path: Path) -> None:
        torch.save({"model": self.gm.state_dict(), "optimizer": self.optimizer.state_dict()}, path)

    def _restore(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.gm.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def close(self) -> None:
        pass
