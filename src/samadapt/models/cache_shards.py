"""An embedding-cache computation split across the ranks of a ``torchrun`` job, and merged back.

``torchrun --nproc_per_node N -m samadapt embed PREPARED`` runs :func:`~samadapt.models.embedding_cache.
compute_embeddings` in N processes. The unit of work is a **whole case**:

- **Assignment** (:func:`assign_cases`): cases go to ranks longest-first by the slices each still needs,
  each to the rank with the least work so far (ties to the lower rank). Every rank computes the same
  assignment from the same cache state, so no message is needed, and no case is lost or done twice.
- **Files**: a case's ``<case>.npy[.partial]`` (and ``.features`` twin) is written by its one owner, in the
  batches one process would use (batches never cross case boundaries), so the merged cache is
  byte-identical to a one-process run with the same batch size. Slices of one case are not split across
  ranks: that would either make two processes write one file or need a copy to merge, and it would change
  batch boundaries (a batched matmul need not give the same bits as two halves). A job with more ranks
  than unfinished cases leaves the extra ranks idle.
- **Progress**: one process keeps per-case progress in ``cache.json``. Under torchrun, rank ``r`` writes
  its cases' progress to ``cache.rank<r>.json`` (atomically, after every batch) and nothing else writes
  there; at the end rank 0 folds every such file into ``cache.json`` (:func:`fold_shard_progress`) and
  deletes them. Rank 0 does the same at the start of every run, so a killed job resumes with any number
  of ranks, or in one process, from its last finished batches.
"""

from __future__ import annotations

import json
from pathlib import Path

SHARD_GLOB = "cache.rank*.json"


def shard_progress_path(root: Path, rank: int) -> Path:
    """Where rank ``rank`` keeps the progress of its cases: ``<root>/cache.rank<rank>.json``."""
    return Path(root) / f"cache.rank{rank}.json"


def assign_cases(remaining: dict[str, int], world: int) -> list[list[str]]:
    """Split cases over ``world`` ranks, balancing the slices left to embed.

    Args:
        remaining: case id -> slices still to embed (0 for a finished case), in case order.
        world: number of ranks.

    Returns:
        ``world`` lists of case ids, each in the order of ``remaining``; together they hold every case
        exactly once. Longest-processing-time-first: within 4/3 of the best possible balance.
    """
    order = list(remaining)
    load, owner = [0] * world, {}
    for cid in sorted(order, key=lambda c: (-remaining[c], order.index(c))):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[cid] = rank
        load[rank] += remaining[cid]
    return [[cid for cid in order if owner[cid] == rank] for rank in range(world)]


def _progress(state: dict) -> tuple[bool, int]:
    return bool(state.get("complete")), int(state.get("done_slices", 0))


def fold_shard_progress(root: Path, info: dict, case_order: list[str]) -> list[Path]:
    """Merge the rank progress files in ``root`` into ``info["cases"]`` (in place); returns the files read.

    A case's state is taken from whichever record has more progress (finished beats unfinished, then more
    finished slices). Files of another signature or unreadable ones are skipped (their cases are then
    resumed from ``cache.json``'s older state, or recomputed). New cases are added in ``case_order``; the
    caller writes ``cache.json`` and then deletes the returned files.
    """
    found = sorted(Path(root).glob(SHARD_GLOB))
    merged: dict[str, dict] = {}
    for path in found:
        try:
            shard = json.loads(path.read_text())
            if shard.get("signature") != info["signature"]:
                continue
            states = dict(shard["cases"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        for cid, state in states.items():
            if cid not in merged or _progress(state) > _progress(merged[cid]):
                merged[cid] = dict(state)
    cases = info["cases"]
    rank_of = {cid: i for i, cid in enumerate(case_order)}
    for cid in sorted(merged, key=lambda c: (rank_of.get(c, len(rank_of)), c)):
        if cid not in cases or _progress(merged[cid]) >= _progress(cases[cid]):
            cases[cid] = merged[cid]
    return found
