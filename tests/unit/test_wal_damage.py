"""Damage in the middle of the log or the snapshot is never taken for a torn tail: recovery stops, naming the
file, the offset and how many intact records follow; with salvage it keeps every intact record, moves the
damaged file aside and says what was dropped. Byte flips at several offsets of a real log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cbctl.runtime.store.wal import WalCorruptError, WriteAheadLog

HEADER = 16
FRAME = 8
RECORDS = [b"record-%02d-" % i + b"x" * (i * 7) for i in range(30)]


def offsets(records: list[bytes]) -> list[int]:
    """Where each record's frame starts in the log."""
    found, at = [], HEADER
    for record in records:
        found.append(at)
        at += FRAME + len(record)
    return found


def write_log(directory: Path, records: list[bytes]) -> Path:
    wal = WriteAheadLog(directory)
    list(wal.replay())
    wal.append_many(records)
    wal.close()
    return directory / "wal.log"


def flip(path: Path, *positions: int) -> None:
    data = bytearray(path.read_bytes())
    for position in positions:
        data[position] ^= 0x5A
    path.write_bytes(bytes(data))


def replay(directory: Path, **kwargs) -> tuple[WriteAheadLog, list[bytes]]:
    wal = WriteAheadLog(directory, **kwargs)
    return wal, list(wal.replay())


STARTS = offsets(RECORDS)
# (where, which record it damages): the length field, the crc, the payload, of the first, a middle and a
# late record, and two records at once
CASES = {
    "first record's length": ([STARTS[0] + 1], [0]),
    "middle record's crc": ([STARTS[15] + 5], [15]),
    "middle record's payload": ([STARTS[15] + FRAME + 3], [15]),
    "middle record's length, high byte": ([STARTS[14] + 3], [14]),
    "second-to-last record's payload": ([STARTS[28] + FRAME + 1], [28]),
    "two records": ([STARTS[3] + FRAME, STARTS[20] + 2], [3, 20]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_flipped_byte_mid_log_stops_recovery_naming_file_offset_and_what_follows(tmp_path, case):
    positions, damaged = CASES[case]
    log_path = write_log(tmp_path, RECORDS)
    before = log_path.read_bytes()
    flip(log_path, *positions)
    with pytest.raises(WalCorruptError) as stopped:
        replay(tmp_path)
    message = str(stopped.value)
    first = damaged[0]
    following = len(RECORDS) - first - len(damaged)
    assert str(log_path) in message and f"byte offset {STARTS[first]}" in message, message
    assert f"{following} intact record(s) follow it" in message, message
    assert "cbctl up --salvage" in message
    damaged_bytes = log_path.read_bytes()
    assert len(damaged_bytes) == len(before), "a refused recovery must not cut or rewrite the log"


@pytest.mark.parametrize("case", CASES)
def test_salvage_keeps_every_intact_record_and_moves_the_damaged_log_aside(tmp_path, case, caplog):
    positions, damaged = CASES[case]
    log_path = write_log(tmp_path, RECORDS)
    flip(log_path, *positions)
    damaged_copy = log_path.read_bytes()
    wal, replayed = replay(tmp_path, salvage=True)
    survivors = [r for i, r in enumerate(RECORDS) if i not in damaged]
    assert replayed == survivors
    (report,) = wal.salvaged
    assert report["records_kept"] == len(survivors)
    assert [d["offset"] for d in report["damaged"]] == [STARTS[i] for i in damaged]
    moved = Path(report["moved_to"])
    assert moved.read_bytes() == damaged_copy, "the damaged file is kept as it was"
    wal.append(b"after")
    wal.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        wal, replayed = replay(tmp_path)  # clean now: no salvage needed, nothing dropped
    assert replayed == [*survivors, b"after"] and wal.salvaged == []
    assert "dropping" not in caplog.text
    wal.close()


def test_a_torn_tail_is_still_cut_without_salvage(tmp_path):
    log_path = write_log(tmp_path, RECORDS)
    with open(log_path, "r+b") as f:
        f.truncate(log_path.stat().st_size - 4)
    wal, replayed = replay(tmp_path)
    assert replayed == RECORDS[:-1]
    wal.close()


def test_snapshot_damaged_in_the_middle_stops_recovery_and_salvage_keeps_the_rest(tmp_path):
    wal, _ = replay(tmp_path)
    wal.compact(RECORDS)
    wal.append(b"after the snapshot")
    wal.close()
    snapshot = tmp_path / "snapshot.bin"
    flip(snapshot, STARTS[10] + FRAME + 2)
    with pytest.raises(WalCorruptError, match=rf"snapshot\.bin is damaged at byte offset {STARTS[10]} .* 19 intact"):
        replay(tmp_path)
    wal, replayed = replay(tmp_path, salvage=True)
    assert replayed == [r for i, r in enumerate(RECORDS) if i != 10] + [b"after the snapshot"]
    assert wal.salvaged[0]["file"] == str(snapshot)
    wal.close()
    wal, replayed = replay(tmp_path)
    assert len(replayed) == len(RECORDS)
    wal.close()
