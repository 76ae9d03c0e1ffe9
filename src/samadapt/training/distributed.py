"""Data-parallel training on ``torch.distributed`` (launched by ``torchrun``), and the single-process default.

``torchrun --nproc_per_node N -m samadapt train PREPARED --out RUN`` starts N processes; each one calls
:func:`setup` (gloo on CPU, NCCL on CUDA, one GPU per local rank). A step's micro-batch of
``batch_size`` slices is split across the ranks (:meth:`Ranks.shard`); each rank divides its loss by the
*global* batch size and the engine sums the gradients over the ranks (:meth:`Ranks.sum_gradients`), so a
step computes the same gradient as one process with the whole micro-batch. Rank 0 alone writes
checkpoints, metrics and models; state that must agree across ranks (CBDP's loss scores) is gathered with
:meth:`Ranks.gather`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world`` (1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence) -> list:
        """This rank's share of ``items`` (every ``world``-th, starting at ``rank``)."""
        return list(items[self.rank :: self.world])

    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the ranks (zeros stand in for a missing gradient)."""
        if self.world == 1:
            return
        for param in parameters:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over the ranks (every rank passes the same keys)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return dict(zip(keys, tensor.tolist(), strict=True))

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world > 1:
            dist.barrier()

    def gather(self, obj: object) -> list:
        """Every rank's ``obj``, in rank order (picklable objects)."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def current() -> Ranks:
    """The ranks of the running job (``Ranks()`` outside ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def setup(device: str) -> tuple[Ranks, str]:
    """Join the ``torchrun`` job described by the environment, if any; returns (ranks, this rank's device).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) a ``cuda`` device becomes ``cuda:<LOCAL_RANK>``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return current(), device
