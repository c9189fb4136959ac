"""Low-memory mode: a model's repeated blocks (the DiT's `transformer_blocks`, Gemma's decoder `layers`) are
read from the converted folder right before each one runs and dropped after it.

`mx.load` of a safetensors shard is lazy: it parses the header and returns arrays that read their bytes
only when evaluated. So the model keeps, in place of each block's weights, lazy arrays that are never
evaluated (no memory); `BlockStream` swaps in freshly loaded ones for the block's turn, starts the next
block's read (`mx.async_eval`) before yielding, and swaps the placeholders back afterwards, so the loaded
weights die as soon as the block's outputs are evaluated. Resident: the non-block weights + two blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .checkpoint import SafetensorsFile
from .folder import read_index

# The components that stream, and the attribute (= key prefix) of their block list.
STREAMED = {"transformer": "transformer_blocks", "gemma": "layers"}


def block_of(name: str, prefix: str) -> int | None:
    """The block index of a weight name `prefix.<i>.…`, else None."""
    head, _, rest = name.partition(".")
    if head != prefix:
        return None
    index = rest.partition(".")[0]
    return int(index) if index.isdigit() else None


class BlockStream:
    """Per-block weights of one converted component, read on each use.

    `transform(weights)` (full names → arrays, lazy) runs on every read, e.g. to fuse LoRAs into the block:
    the same operations on the same tensors as a resident load, so the same bits."""

    def __init__(self, folder: str | Path, prefix: str,
                 transform: Callable[[dict[str, mx.array]], dict[str, mx.array]] | None = None):
        self.folder, self.prefix, self.transform = Path(folder), prefix, transform
        self.shards: dict[int, list[str]] = {}
        for name, shard in read_index(self.folder).items():
            i = block_of(name, prefix)
            if i is not None and shard not in self.shards.setdefault(i, []):
                self.shards[i].append(shard)

    def read(self, i: int) -> dict[str, mx.array]:
        """Block i's weights as fresh lazy arrays, named relative to the block (`attn1.to_q.weight`)."""
        head = f"{self.prefix}.{i}."
        weights = {}
        for shard in self.shards[i]:
            weights.update((k, v) for k, v in mx.load(str(self.folder / shard)).items() if k.startswith(head))
        if self.transform is not None:
            weights = self.transform(weights)
        return {k[len(head):]: v for k, v in weights.items()}

    def _start(self, i: int) -> dict[str, mx.array]:
        weights = self.read(i)
        mx.async_eval(list(weights.values()))  # the read overlaps whatever runs before block i
        return weights

    def __call__(self, blocks: Sequence[nn.Module]) -> Iterator[nn.Module]:
        """The blocks in order, each with its weights loaded while it is the current one."""
        upcoming = self._start(0) if blocks else None
        for i, block in enumerate(blocks):
            weights, held = upcoming, tree_flatten(block.parameters())
            upcoming = self._start(i + 1) if i + 1 < len(blocks) else None
            block.update(tree_unflatten(list(weights.items())))
            del weights
            try:
                yield block
            finally:
                block.update(tree_unflatten(held))


def streamed_keys(weights: dict, kind: str) -> set[str]:
    """The names of a component's weights that stream in low-memory mode (empty for other components)."""
    prefix = STREAMED.get(kind)
    return {k for k in weights if prefix and block_of(k, prefix) is not None}


def block_bytes(folder: str | Path, kind: str) -> tuple[int, list[int]]:
    """(bytes of the non-block weights, bytes of each block), from the shards' headers only."""
    folder, prefix = Path(folder), STREAMED.get(kind)
    resident, blocks = 0, {}
    files = {}
    for name, shard in read_index(folder).items():
        if shard not in files:
            files[shard] = SafetensorsFile(folder / shard, converted=True)
        n = files[shard].nbytes(name)
        i = block_of(name, prefix) if prefix else None
        if i is None:
            resident += n
        else:
            blocks[i] = blocks.get(i, 0) + n
    return resident, [blocks[i] for i in sorted(blocks)]
