"""Where a job runs: its ranks under ``torch.distributed`` (launched by ``torchrun``) and its device.

A neutral module that every package may import (the embedding cache, the training engine, the evaluation
protocols, the command line): it depends on nothing of samadapt but :mod:`samadapt.errors`.

``torchrun --nproc_per_node N -m samadapt train PREPARED --out RUN`` starts N processes; each one calls
:func:`setup` (gloo on CPU; on CUDA NCCL for CUDA tensors and gloo for CPU tensors and objects, one GPU
per local rank). A step's micro-batch of
``batch_size`` slices is split across the ranks (:meth:`Ranks.shard`); each rank divides its loss by the
*global* batch size and the engine sums the gradients over the ranks (:meth:`Ranks.sum_gradients`), so a
step computes the same gradient as one process with the whole micro-batch. Rank 0 alone writes
checkpoints, metrics and models; state that must agree across ranks (CBDP's loss scores) is gathered with
:meth:`Ranks.gather`. Every command leaves the job with :func:`leave` when it ends. :func:`resolve_device`
turns a ``--device`` setting into a checked ``torch.device``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from samadapt.errors import ConfigError, SamadaptError


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

    def raise_together(self, error: BaseException | None) -> None:
        """Raise on every rank when any rank failed (pass ``None`` when this one did not), so no rank waits
        forever at a later collective for one that is gone. Also a barrier.

        A failing rank re-raises its own ``error``; the others raise the lowest failing rank's error (a
        :class:`~samadapt.errors.SamadaptError` as it is, anything else as a ``RuntimeError`` naming it).
        """
        if self.world == 1:
            if error is not None:
                raise error
            return
        portable = error if error is None or isinstance(error, SamadaptError) else RuntimeError(
            f"{type(error).__name__}: {error}")
        errors = self.gather(portable)
        if error is not None:
            raise error
        for rank, other in enumerate(errors):
            if other is not None:
                if isinstance(other, SamadaptError):
                    raise other
                raise RuntimeError(f"rank {rank} of {self.world} failed: {other}")

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
    use_nccl = device.startswith("cuda") and torch.cuda.is_available()
    if world > 1 and use_nccl:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # NCCL's tensors stay on this rank's GPU
    if world > 1 and not dist.is_initialized():
        # NCCL carries CUDA tensors (gradients); gloo the CPU ones (step statistics) and the pickled objects
        # (generator states, CBDP scores, errors): NCCL alone cannot reduce a CPU tensor
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if use_nccl else "gloo")
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return current(), device


def leave(failed: bool = False) -> None:
    """Leave the ``torchrun`` job this process joined (:func:`setup`): destroy its process group, so the
    backend's worker threads stop while the interpreter is still whole. A rank that exits with a live gloo
    group can abort (SIGABRT) in interpreter finalisation, when those threads release the tensors of their
    last work; torchrun then fails the job although every rank finished. A no-op outside a job.

    ``failed``: the command ended with an error. NCCL's destruction may then wait for a peer blocked in a
    collective, so an NCCL group is left to the process's exit (torchrun reaps the peers); gloo's is local.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if failed and "nccl" in str(dist.get_backend()):
        return
    dist.destroy_process_group()


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`; :class:`ConfigError` when it is malformed or not present."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device '{device}' is not a torch device; use cpu, cuda or cuda:<index>") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but no CUDA GPU is available; use --device cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{device}': only {torch.cuda.device_count()} CUDA device(s) here")
    return resolved
