"""Large local files written around the page cache (compactor.direct_write)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from compactor import direct_write
from compactor.direct_write import ALIGN, STAGE_BYTES, DirectWriter, open_direct
from compactor.fs import Storage
from compactor.pipeline import index_store

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, STAGE_BYTES - 1, STAGE_BYTES, STAGE_BYTES + 1,
         2 * STAGE_BYTES + 12_345]


def _payload(n: int) -> bytes:
    return np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()


def _write(path: Path, data: bytes, piece: int) -> DirectWriter:
    writer = open_direct(str(path))
    assert writer is not None, f"no direct writes on {path}'s filesystem"
    with writer:
        for at in range(0, len(data), piece):
            assert writer.write(data[at:at + piece]) == len(data[at:at + piece])
            assert writer.tell() == min(at + piece, len(data))
    assert writer.closed
    return writer


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("piece", [1000, ALIGN, 3 * STAGE_BYTES])
def test_the_file_holds_exactly_the_bytes_written(tmp_path: Path, size: int, piece: int) -> None:
    data = _payload(size)
    writer = _write(tmp_path / "f", data, piece)
    assert (tmp_path / "f").read_bytes() == data
    # (this filesystem takes direct writes: all but the unaligned end went so)
    assert writer.direct_bytes == size - size % ALIGN


def test_an_existing_file_is_truncated(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * (3 * ALIGN))
    _write(tmp_path / "f", b"short", 100)
    assert (tmp_path / "f").read_bytes() == b"short"


def test_a_filesystem_refusing_a_direct_write_gets_it_through_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = []
    pwrite = os.pwrite

    def fussy(fd: int, data: memoryview, offset: int) -> int:
        if not refused:  # the first direct write: as a filesystem wanting another alignment
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return pwrite(fd, data, offset)

    monkeypatch.setattr(direct_write.os, "pwrite", fussy)
    data = _payload(2 * STAGE_BYTES + 77)
    writer = _write(tmp_path / "f", data, STAGE_BYTES // 3)
    assert refused == [0]
    assert writer.direct_bytes == 0
    assert (tmp_path / "f").read_bytes() == data


def test_other_errors_of_a_write_are_raised(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_write.os, "pwrite", full)
    writer = open_direct(str(tmp_path / "f"))
    assert writer is not None
    with pytest.raises(OSError, match="No space left") as raised, writer:
        writer.write(_payload(STAGE_BYTES))
    assert writer.closed
    assert f"writing {tmp_path / 'f'}" in raised.value.__notes__  # the file is named
    with pytest.raises(ValueError, match="closed file"):
        writer.write(b"more")


def test_where_direct_opens_are_refused_the_storage_writes_the_usual_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def no_direct(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(direct_write.os, "open", no_direct)
    assert open_direct(str(tmp_path / "f")) is None
    storage = Storage(f"file://{tmp_path}")
    with storage.open_output("a/b", uncached=True) as out:
        assert not isinstance(out, DirectWriter)
        out.write(b"plain")
    assert (tmp_path / "a" / "b").read_bytes() == b"plain"


def test_an_index_file_written_around_the_cache_reads_back_whole(tmp_path: Path) -> None:
    n = 300_001  # several stages of each column, and an unaligned end
    rng = np.random.default_rng(3)
    table = pa.table({
        "hi": np.sort(rng.integers(0, 2**63, n)).astype(np.uint64),
        "lo": rng.integers(0, 2**63, n).astype(np.uint64),
        "file": rng.integers(0, 30, n).astype(np.int32),
        "row": rng.integers(0, 2**20, n).astype(np.int32),
        "op": np.zeros(n, np.int8),
    })
    storage = Storage(f"file://{tmp_path}")
    with storage.open_output("direct.arrow", uncached=True) as out:
        assert isinstance(out, DirectWriter)
    index_store.write(storage, "i/index.arrow", table)
    with ipc.open_file(str(tmp_path / "i" / "index.arrow")) as f:
        back = f.read_all()
    assert back.replace_schema_metadata(None).equals(table)
