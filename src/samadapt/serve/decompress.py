"""Uploads decompressed under a byte budget, so that a small gzip file cannot cost unbounded work.

A ``.nii.gz`` of zeros shrinks about 1000x: a 0.4 MB upload can stand for 190 M voxels, and a stream longer
than its header declares would still be decompressed in full by a completeness check. The web app therefore
decompresses a gzip upload itself, in bounded chunks, into a plain ``.nii`` beside it and stops as soon as
the output passes the budget (:class:`~samadapt.serve.sessions.VolumeTooLargeError`, HTTP 413); memory stays
at one chunk whatever the compression ratio.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from samadapt.errors import InputFileError
from samadapt.serve.sessions import VolumeTooLargeError

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20  # bytes read, and at most bytes produced, per step


def gunzip_within(path: Path, budget: int, shown_name: str) -> Path:
    """The decompressed file beside ``path`` when ``path`` is a gzip file named ``*.gz`` (``path`` is then removed),
    else ``path`` itself.

    Raises :class:`VolumeTooLargeError` once more than ``budget`` bytes come out (nothing is left behind) and
    :class:`InputFileError` for a corrupt or truncated stream. Several concatenated gzip members are read as
    one stream, as gzip does.
    """
    if not path.name.lower().endswith(".gz"):
        return path
    with open(path, "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            return path
    target = path.with_name(path.name[: -len(".gz")])
    try:
        with open(path, "rb") as src, open(target, "wb") as out:
            produced, pending, in_member = 0, b"", False
            decompressor = zlib.decompressobj(wbits=31)
            while True:
                if not pending:
                    pending = src.read(CHUNK)
                if not in_member:  # zero padding may follow the last member, as gzip allows
                    pending = pending.lstrip(b"\0")
                    if not pending:
                        if src.peek(1):
                            continue
                        break
                    in_member, decompressor = True, zlib.decompressobj(wbits=31)
                data = decompressor.decompress(pending, CHUNK)  # bounded output: a bomb never fills memory
                produced += len(data)
                if produced > budget:
                    raise VolumeTooLargeError(f"{shown_name}: decompresses to more than this server's limit of "
                                              f"{budget} bytes; crop or resample the volume")
                out.write(data)
                if decompressor.eof:
                    pending, in_member = decompressor.unused_data, False
                elif not pending and not data:  # input used up and nothing more comes out: a cut stream
                    break
                else:
                    pending = decompressor.unconsumed_tail
            if in_member:
                raise InputFileError(f"{shown_name}: is truncated (its gzip stream ends early); upload the whole file")
    except zlib.error as err:
        target.unlink(missing_ok=True)
        raise InputFileError(f"{shown_name}: is not a valid gzip file ({err}); re-export the volume") from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    path.unlink(missing_ok=True)
    return target
