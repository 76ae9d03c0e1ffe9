"""Per-slice results on disk, and slices scored in worker processes: what makes a long evaluation resumable.

The slow protocols of ``samadapt eval`` (interactive, robustness, ``--prompts auto``) score one slice at a
time. :func:`score_slices` runs such a protocol over a list of slices and appends each finished slice's
result to a :class:`SliceStore`, a JSON-lines file in the report folder::

    <out>/slice_results/<protocol>-<key[:16]>.jsonl
        {"format": 1, "protocol": ..., "key": <sha256>, "identity": {...}}    the header
        {"case_id": "case_003", "slice": 12, "result": ...}                    one line per finished slice

The **key** is a sha256 of the identity: the protocol, the model's weights (and any adapter's), the
embedding cache's signature (encoder, preprocessing, prepared data), the dataset hash, the split and every
setting the protocol's numbers depend on. A rerun with the same identity reads the finished slices back
instead of recomputing them; any other model, checkpoint, dataset or setting gets another file, so results
are never mixed. The slice sample (``--max-slices``) is not part of the key: a slice's result does not
depend on which other slices are evaluated, so a larger sample reuses a smaller one's slices.

The device and the number of threads are not part of the key: they change results by floating-point
rounding only (which can move one simulated click by a pixel). The identity holds no code version: bump
:data:`STORE_FORMAT` when a change of the protocols' code changes their numbers, so that older files are no
longer read back.

Each line is written, flushed and fsynced as its slice finishes; a line cut short by a crash is dropped
when the file is read (and cut off before the next append). Results come back through a JSON round trip
in both cases, so a resumed evaluation and an uninterrupted one report the very same numbers.

**Workers.** With ``workers > 1`` the slices go to that many processes (``spawn``; the job, with its model,
is sent once per worker, tensors through shared memory) and the torch threads of this process are shared
out among them. Each finished slice is stored by this process as it comes back, in completion order; the
results are returned in the order of the slices asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing

from samadapt.errors import ConfigError
from samadapt.io.atomic import atomic_path
from samadapt.progress import Progress

SLICES_DIR = "slice_results"
"""The report folder's subfolder of per-slice result files."""
STORE_FORMAT = 1

SliceKey = tuple[str, int]
"""``(case_id, slice index)`` of a prepared slice."""


def _plain(value: Any) -> Any:
    """JSON fallback for numpy scalars and arrays inside results."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_plain, separators=(",", ":"))


def round_trip(result: Any) -> Any:
    """``result`` as it reads back from a store (numpy scalars become Python numbers, tuples lists)."""
    return json.loads(_dumps(result))


def identity_key(identity: Mapping[str, Any]) -> str:
    """sha256 hex of ``identity`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=_plain).encode()).hexdigest()


class SliceStore:
    """The finished slices of one protocol run (see the module docstring), read at construction.

    Args:
        folder: where the file lives (``<out>/slice_results``); created at the first :meth:`append`.
        protocol: a short name, the start of the file name (``interactive``, ``robustness``, ``automatic``).
        identity: everything the results depend on (JSON-serialisable); hashed into the file name.
    """

    def __init__(self, folder: str | os.PathLike[str], protocol: str, identity: Mapping[str, Any]):
        self.identity = {"format": STORE_FORMAT, "protocol": protocol, **identity}
        self.key = identity_key(self.identity)
        self.path = Path(folder) / f"{protocol}-{self.key[:16]}.jsonl"
        self._done: dict[SliceKey, Any] = {}
        self._valid_bytes = 0  # bytes of the file that hold a matching header and complete lines
        self._read()

    def __repr__(self) -> str:
        return f"SliceStore({str(self.path)!r}, finished={len(self._done)})"

    @property
    def done(self) -> dict[SliceKey, Any]:
        """Finished slices: ``{(case_id, slice): result}``."""
        return dict(self._done)

    def _read(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        offset = 0
        for number, line in enumerate(data.split(b"\n")[:-1]):  # the part after the last newline is cut short
            try:
                record = json.loads(line)
            except ValueError:
                break
            if number == 0:
                if not isinstance(record, dict) or record.get("key") != self.key:
                    return  # not this run's file (a collision of the short name): start it over
            else:
                if not isinstance(record, dict) or not {"case_id", "slice", "result"} <= record.keys():
                    break
                self._done[(str(record["case_id"]), int(record["slice"]))] = record["result"]
            offset += len(line) + 1
        self._valid_bytes = offset

    def append(self, key: SliceKey, result: Any) -> Any:
        """Store the result of slice ``key`` (flushed and fsynced); returns it as it reads back."""
        text = _dumps({"case_id": key[0], "slice": int(key[1]), "result": result})
        if self._valid_bytes == 0:  # a new file (or a foreign / broken one): the header first, atomically
            header = _dumps({"format": STORE_FORMAT, "protocol": self.identity["protocol"], "key": self.key,
                             "identity": self.identity}) + "\n"
            with atomic_path(self.path, suffix=".jsonl") as tmp:
                tmp.write_text(header)
            self._valid_bytes = len(header.encode())
        with open(self.path, "r+b") as handle:
            handle.truncate(self._valid_bytes)  # drop a line cut short by an earlier crash
            handle.seek(self._valid_bytes)
            handle.write(text.encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._valid_bytes += len(text.encode()) + 1
        stored = json.loads(text)["result"]
        self._done[(str(key[0]), int(key[1]))] = stored
        return stored


def copy_stores(stores: Iterable[SliceStore | None], report: Path) -> None:
    """Copy the files of ``stores`` into ``report/slice_results`` (a report folder being written, which
    replaces the old one), so that a rerun into the report folder finds them."""
    for store in stores:
        if store is not None and store.path.is_file():
            target = Path(report) / SLICES_DIR / store.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store.path, target)


def check_workers(workers: int, device: str | torch.device = "cpu") -> int:
    """``workers`` as an int >= 1; :class:`ConfigError` for less, or for several on a non-CPU device."""
    try:
        value = int(workers)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or value != workers:
        raise ConfigError(f"--workers {workers}: give a number of worker processes >= 1 (1: no workers)")
    if value > 1 and str(device).split(":")[0] != "cpu":
        raise ConfigError(f"--workers {value} with --device {device}: worker processes share out CPU cores; use "
                          "--workers 1 on a GPU")
    return value


_JOB: Callable[[SliceKey], Any] | None = None


def _start_worker(job: Callable[[SliceKey], Any], threads: int) -> None:
    global _JOB
    torch.set_num_threads(threads)
    _JOB = job


def _run_in_worker(key: SliceKey) -> tuple[SliceKey, Any]:
    assert _JOB is not None
    return key, round_trip(_JOB(key))


@contextmanager
def _worker_pool(job: Callable[[SliceKey], Any], workers: int) -> Iterator[Any]:
    threads = max(1, torch.get_num_threads() // workers)
    context = torch.multiprocessing.get_context("spawn")
    pool = context.Pool(workers, initializer=_start_worker, initargs=(job, threads))
    try:
        yield pool
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def score_slices(
    keys: Sequence[SliceKey],
    job: Callable[[SliceKey], Any],
    store: SliceStore | None = None,
    workers: int = 1,
    progress: Progress | None = None,
) -> list[Any]:
    """``job(key)`` for every slice of ``keys``, in that order; finished slices of ``store`` are read back.

    Args:
        keys: the slices, ``(case_id, slice)``.
        job: computes one slice's JSON-serialisable result. With ``workers > 1`` it must pickle (a
            module-level class holding the model, the prepared dataset and the cache does).
        store: where results are read back from and appended to as they finish (None: nothing on disk).
        workers: processes scoring slices at once (1: this process).
        progress: ``progress(done, total)`` over the slices (read back ones count at once, at the start).

    Returns:
        The results in the order of ``keys``, each as it reads back from a store (:func:`round_trip`).
    """
    done = store.done if store is not None else {}
    results = {key: done[key] for key in keys if key in done}
    total = len(dict.fromkeys(keys))
    if progress is not None and results:
        progress(len(results), total)
    pending = list(dict.fromkeys(key for key in keys if key not in results))

    def finish(key: SliceKey, result: Any) -> None:
        results[key] = store.append(key, result) if store is not None else round_trip(result)
        if progress is not None:
            progress(len(results), total)

    if workers <= 1 or len(pending) <= 1:
        for key in pending:
            finish(key, job(key))
    else:
        with _worker_pool(job, min(workers, len(pending))) as pool:
            for key, result in pool.imap_unordered(_run_in_worker, pending):
                finish(key, result)
    return [results[key] for key in keys]


def slice_seed(seed: int, stream: int, key: SliceKey) -> int:
    """A 63-bit seed for the random draws of one slice in one stream (e.g. a prompting behaviour), the same
    whichever other slices are evaluated and in whichever order."""
    digest = hashlib.sha256(_dumps([int(seed), int(stream), str(key[0]), int(key[1])]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
