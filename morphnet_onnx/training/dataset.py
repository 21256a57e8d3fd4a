"""What every data set is to the training loop: examples gathered by index into batches.

A `Dataset` keeps every label in memory (one number per example) and reads inputs only when a
batch asks for them (`gather`): arrays in memory or mapped from disk (arrays.py), images decoded
from a folder (images.py). `batches` is the one place that orders examples: the shuffle of an epoch
(seeded), resuming mid-epoch (`skip`), the rank's share of each global batch under torchrun
(`shard`), and reading ahead in threads (`workers`, `prefetch`) while the step runs.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx

from ..errors import MorphNetError
from ..graph_utils import graph_input_names
from .distributed import World


@dataclass
class InputSpec:
    name: str
    shape: tuple[int, ...]  # batch-1 static shape
    dtype: np.dtype


def input_specs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> list[InputSpec]:
    inputs = {i.name: i for i in model.graph.input}
    specs = []
    for name in graph_input_names(model):
        elem = inputs[name].type.tensor_type.elem_type
        specs.append(InputSpec(name, tuple(shapes[name]), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))))
    return specs


class Dataset:
    """Examples by index: `labels` in memory, inputs read by `gather`.

    Subclasses set `name`, `labels` (int64 class indices or float32 targets), `classes` (class names
    by label, or None), `workers` (threads that read batches ahead; 0: read in the caller) and
    `prefetch` (batches read ahead of the one the loop holds), and implement `gather`.
    """

    name: str = ""
    labels: np.ndarray
    classes: list[str] | None = None
    workers: int = 0
    prefetch: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, rows: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        """The model inputs of examples `rows`, by input name; `seed` draws any augmentation (the same
        seed and example give the same result, whatever the batch, thread or rank)."""
        raise NotImplementedError

    def batches(self, batch_size: int, shuffle: bool, seed: int, skip: int = 0, shard: World | None = None,
                fill_last: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Batches of `batch_size` examples: the inputs by name, and `labels`.

        - `shuffle`: a permutation drawn from `seed` (one per epoch: the loop passes seed + epoch).
        - `skip`: start after that many batches (resuming mid-epoch gives the batches an
          uninterrupted run would have seen).
        - `shard`: under torchrun, the inputs hold only this rank's rows of each global batch (rank,
          rank + N, ..., torch's DistributedSampler's interleaving), and only those are read; the
          labels stay the global batch's (the loop judges accuracy on the gathered logits).
        - `fill_last`: every example once, the last batch filled up from the start (a static batch
          size); otherwise full batches only (training graphs have a static batch size).

        With `workers`, threads read batches while the caller uses the last one: at most `prefetch`
        batches are read (or being read) ahead of the one the caller holds, so at most prefetch + 1
        batches of inputs exist at once.
        """
        plans = self._plans(batch_size, shuffle, seed, skip, shard, fill_last)
        if self.workers < 1:
            for index, rows in plans:
                yield self._batch(index, rows, seed)
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="morphnet-data") as pool:
            pending: deque = deque()
            try:
                for index, rows in plans:
                    if len(pending) >= max(self.prefetch, 1):
                        yield pending.popleft().result()
                    pending.append(pool.submit(self._batch, index, rows, seed))
                while pending:
                    yield pending.popleft().result()
            finally:  # the loop stopped early (the last step, an error, Ctrl-C): read nothing more
                for future in pending:
                    future.cancel()

    def _plans(self, batch_size: int, shuffle: bool, seed: int, skip: int, shard: World | None,
               fill_last: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        end = n if fill_last else n - batch_size + 1
        for start in range(skip * batch_size, end, batch_size):
            index = order[np.arange(start, start + batch_size) % n]
            rows = index[shard.rank::shard.size] if shard is not None and shard.distributed else index
            yield index, rows

    def _batch(self, index: np.ndarray, rows: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        batch = self.gather(rows, seed)
        batch["labels"] = self.labels[index]
        return batch

    def batches_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size

    def require_batches(self, batch_size: int) -> int:
        """Full batches per epoch; MorphNetError when there is not one (training has a static batch)."""
        per_epoch = self.batches_per_epoch(batch_size)
        if per_epoch == 0:
            raise MorphNetError(f"{self.name}: {len(self)} examples, fewer than one batch of {batch_size}; "
                                f"lower --batch-size")
        return per_epoch
