"""Which process of a data-parallel run this is, read from torchrun's environment without importing
torch (the `ort` path never loads it).

`torchrun --nproc-per-node N -m morphnet_onnx shrink ... --backend torch` starts N copies of the
command; each reads RANK, WORLD_SIZE and LOCAL_RANK. Every rank runs the same pipeline on the same
files: training is data-parallel (training/torch_backend.py), the controller, decide and surgery see
identical weights on every rank, and only rank 0 writes files and prints progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import MorphNetError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes outputs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun (or Slurm through torchrun) sets them; one process otherwise."""
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = os.environ.get(name)
        try:
            values[name] = int(text) if text not in (None, "") else default
        except ValueError as exc:
            raise MorphNetError(f"environment variable {name}={text!r}: must be a whole number") from exc
    world = World(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise MorphNetError(f"RANK={world.rank}, WORLD_SIZE={world.size}: the rank must be in 0..WORLD_SIZE-1")
    return world


def is_main() -> bool:
    return current_world().main


def barrier() -> None:
    """Wait for every rank (after rank 0 wrote a file that the others read next); nothing in one process."""
    if not current_world().distributed:
        return
    # torch only under torchrun, where the torch backend has already started the process group.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shared(value):
    """Rank 0's `value` on every rank (what rank 0 measured: timings differ between processes, and the
    decisions taken from them must not); `value` itself in one process. Every rank calls it."""
    if not current_world().distributed:
        return value
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
