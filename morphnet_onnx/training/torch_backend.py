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

import math
from pathlib import Path

import numpy as np
import torch  # this module is imported only for --backend torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import MorphNetError, first_line
from ..graph_utils import graph_input_names
from ..loading.model import LoadedModel
from ..method.figs import GatePlacement
from ..method.regularizers import EPS, GroupRegularizer
from .backend import COST_WEIGHTS, StepOutput
from .distributed import World
from .torch_model import TensorRef, convert_model, torch_graph, trainable_refs

# ---- the regularizer ---------------------------------------------------------------------------------

class TorchRegularizer:
    """regularizers.add_regularizer in torch: the concatenated regularization vector of `regs`."""

    def __init__(self, regs: list[GroupRegularizer], refs: dict[str, TensorRef], device: torch.device) -> None:
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
                            f"({first_line(exc)}); launch with torchrun") from exc


class TorchSession:
    """The converted module, its optimizer and (under torchrun) its DistributedDataParallel wrapper."""

    def __init__(self, loaded: LoadedModel, options, regs: list[GroupRegularizer], gates: list[GatePlacement],
                 target_shape: list[int] | None, world: World, resume_from: Path | None) -> None:
        if options.batch_size % world.size:
            raise MorphNetError(f"--batch-size {options.batch_size} is the global batch: it must be a multiple of "
                                f"the {world.size} processes")
        self.options, self.regs, self.world, self.name = options, regs, world, loaded.name
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
        """The rank's share of a global batch's labels: examples rank, rank + N, ... (DistributedSampler's
        interleaving, so that the union over ranks is the global batch of one process). The inputs come
        as the rank's share already: the data set reads only those rows (training/dataset.py)."""
        if self.world.distributed:
            value = value[self.world.rank::self.world.size]
        return torch.from_numpy(np.ascontiguousarray(value)).to(self.device)

    def _inputs(self, batch: dict[str, np.ndarray]) -> list[torch.Tensor]:
        # the FiGS gate noise (one sample per channel) is the same on every rank; the inputs are the rank's rows
        return [torch.from_numpy(np.ascontiguousarray(batch[name])).to(self.device) for name in self.input_names]

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
        loss = task + reg
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
