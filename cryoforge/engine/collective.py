"""Several processes (``torchrun``) splitting the particles of a stage: shards, sums and gathers.

Every non-gradient stage works the same way: each process takes a contiguous shard of the
particles (:meth:`Collective.shard`), scores its own particles (scores are per particle),
adds its images to backprojection sums that are summed over the processes before any map is
made (:meth:`Collective.sum_sums`), and gathers the per-particle results so that every process
holds the whole pose table (:meth:`Collective.gather`). With one process every method is the
identity, so the single-process path is the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from cryoforge.ops.projection import BackprojectionSums


@dataclass(frozen=True)
class Collective:
    """The processes of a run as a stage sees them: this one's ``rank`` of ``world``."""

    rank: int = 0
    world: int = 1

    def shard(self, n: int) -> slice:
        """This process's contiguous share of ``n`` rows (sizes differ by at most one)."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the processes, in place (returned for chaining)."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def total(self, value: float) -> float:
        """A float summed over the processes."""
        if self.world == 1:
            return value
        return float(self.sum_(torch.tensor([value], dtype=torch.float64))[0])

    def sum_sums(self, acc: BackprojectionSums) -> BackprojectionSums:
        """Backprojection sums of every process's images (in place)."""
        self.sum_(acc.sums)
        return acc

    def gather(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """The rows of every process's shard of ``n`` rows, in order: ``(n, ...)`` on every process."""
        if self.world == 1:
            return part
        size = -(-n // self.world)  # shards are padded to one size for all_gather
        pad = torch.zeros((size, *part.shape[1:]), dtype=part.dtype)
        pad[: len(part)] = part
        out = [torch.empty_like(pad) for _ in range(self.world)]
        dist.all_gather(out, pad)
        pieces = []
        for r in range(self.world):
            sl = Collective(r, self.world).shard(n)
            pieces.append(out[r][: sl.stop - sl.start])
        return torch.cat(pieces)


LOCAL = Collective()
"""One process: shards are everything, sums and gathers change nothing."""
