"""Tests for the store's write-ahead log: framing, recovery from torn tails, compaction, durability policy."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cbctl.runtime.store import wal as wal_module
from cbctl.runtime.store.wal import WalCorruptError, WriteAheadLog
from tests.unit.clocks import Clock

REPO_ROOT = Path(__file__).resolve().parents[2]
HEADER = 16  # magic + generation at the start of both files
FRAME = 8  # length + crc before each payload


def reopen_and_replay(directory: Path, **kwargs: object) -> tuple[WriteAheadLog, list[bytes]]:
    wal = WriteAheadLog(directory, **kwargs)  # type: ignore[arg-type]
    return wal, list(wal.replay())


def write_session(directory: Path, records: list[bytes], **kwargs: object) -> None:
    wal, _ = reopen_and_replay(directory, **kwargs)
    for record in records:
        wal.append(record)
    wal.close()


def test_round_trip_including_empty_and_binary_records(tmp_path: Path) -> None:
    records = [b"", b"a", bytes(range(256)), b"x" * 100_000]
    write_session(tmp_path, records)
    wal, replayed = reopen_and_replay(tmp_path)
    assert replayed == records
    assert wal.log_bytes == HEADER + sum(FRAME + len(r) for r in records)
    assert wal.snapshot_bytes == 0
    wal.close()


def test_creates_missing_directory(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    write_session(directory, [b"one"])
    assert sorted(p.name for p in directory.iterdir()) == ["wal.log"]
    assert reopen_and_replay(directory)[1] == [b"one"]


def test_append_many_uses_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal, _ = reopen_and_replay(tmp_path)
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(fd)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    wal.append_many([b"r%d" % i for i in range(50)])
    wal.append_many([])
    monkeypatch.undo()
    assert len(writes) == 1
    wal.append(b"single")
    wal.close()
    assert reopen_and_replay(tmp_path)[1] == [b"r%d" % i for i in range(50)] + [b"single"]


def test_replay_accumulates_across_sessions(tmp_path: Path) -> None:
    write_session(tmp_path, [b"1", b"2"])
    write_session(tmp_path, [b"3"])
    write_session(tmp_path, [b"4", b"5"], durability="always")
    assert reopen_and_replay(tmp_path)[1] == [b"1", b"2", b"3", b"4", b"5"]


def _tear_mid_payload(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 3)


def _tear_mid_header(path: Path) -> None:
    os.truncate(path, path.stat().st_size - len(b"last") - FRAME + 5)


def _append_garbage(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\xff\xff\x00\x00garbage that is no frame")


def _flip_last_payload_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0x01]))


@pytest.mark.parametrize(
    ("damage", "survivors"),
    [
        (_tear_mid_payload, [b"first", b"second"]),
        (_tear_mid_header, [b"first", b"second"]),
        (_append_garbage, [b"first", b"second", b"last"]),
        (_flip_last_payload_byte, [b"first", b"second"]),
    ],
)
def test_damaged_tail_is_dropped_and_later_appends_are_readable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage, survivors: list[bytes]
) -> None:
    write_session(tmp_path, [b"first", b"second", b"last"])
    log_path = tmp_path / "wal.log"
    damage(log_path)
    good_end = HEADER + sum(FRAME + len(r) for r in survivors)

    with caplog.at_level(logging.WARNING, logger=wal_module.__name__):
        wal, replayed = reopen_and_replay(tmp_path)
    assert replayed == survivors
    assert f"byte offset {good_end}" in caplog.text
    assert log_path.stat().st_size == good_end == wal.log_bytes

    wal.append(b"after")
    wal.close()
    caplog.clear()
    assert reopen_and_replay(tmp_path)[1] == [*survivors, b"after"]
    assert "dropping" not in caplog.text


def test_append_without_replay_still_cuts_a_torn_tail(tmp_path: Path) -> None:
    write_session(tmp_path, [b"first", b"second"])
    _tear_mid_payload(tmp_path / "wal.log")
    wal = WriteAheadLog(tmp_path)
    wal.append(b"third")
    wal.close()
    assert reopen_and_replay(tmp_path)[1] == [b"first", b"third"]


def test_compact_then_appends_then_reopen(tmp_path: Path) -> None:
    wal, _ = reopen_and_replay(tmp_path)
    for i in range(100):
        wal.append(b"old-%d" % i)
    wal.compact([b"state-a", b"state-b"])
    assert wal.log_bytes == HEADER
    assert wal.snapshot_bytes == HEADER + 2 * FRAME + len(b"state-a") * 2
    wal.append(b"new-1")
    wal.append_many([b"new-2", b"new-3"])
    wal.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.bin", "wal.log"]
    wal, replayed = reopen_and_replay(tmp_path)
    assert replayed == [b"state-a", b"state-b", b"new-1", b"new-2", b"new-3"]

    wal.compact(iter([b"state-c"]))  # any iterable, and a second compaction replaces the first
    wal.close()
    assert reopen_and_replay(tmp_path)[1] == [b"state-c"]


def test_compact_to_empty_state(tmp_path: Path) -> None:
    write_session(tmp_path, [b"x"])
    wal, _ = reopen_and_replay(tmp_path)
    wal.compact([])
    wal.close()
    assert reopen_and_replay(tmp_path)[1] == []


def test_compaction_tmp_leftovers_are_removed(tmp_path: Path) -> None:
    write_session(tmp_path, [b"a"])
    (tmp_path / "snapshot.bin.tmp").write_bytes(b"half a snapshot")
    (tmp_path / "wal.log.tmp").write_bytes(b"half a log")
    wal, replayed = reopen_and_replay(tmp_path)
    assert replayed == [b"a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal.log"]
    wal.close()


def test_compact_failure_keeps_old_state_and_removes_tmp(tmp_path: Path) -> None:
    write_session(tmp_path, [b"a", b"b"])
    wal, _ = reopen_and_replay(tmp_path)

    def failing_state():
        yield b"partial"
        raise RuntimeError("store iteration failed")

    with pytest.raises(RuntimeError):
        wal.compact(failing_state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal.log"]
    wal.append(b"c")
    wal.close()
    assert reopen_and_replay(tmp_path)[1] == [b"a", b"b", b"c"]


def test_crash_between_snapshot_and_new_log_does_not_replay_twice(tmp_path: Path) -> None:
    write_session(tmp_path, [b"a", b"b"])
    old_log = (tmp_path / "wal.log").read_bytes()
    wal, _ = reopen_and_replay(tmp_path)
    wal.compact([b"a", b"b"])
    wal.close()
    # Put back the pre-compaction log, as if we died after installing the snapshot but before the new log.
    (tmp_path / "wal.log").write_bytes(old_log)
    wal, replayed = reopen_and_replay(tmp_path)
    assert replayed == [b"a", b"b"]
    wal.append(b"c")
    wal.close()
    assert reopen_and_replay(tmp_path)[1] == [b"a", b"b", b"c"]


def test_corrupt_snapshot_is_a_hard_error_naming_the_file(tmp_path: Path) -> None:
    wal, _ = reopen_and_replay(tmp_path)
    wal.compact([b"state-one", b"state-two"])
    wal.close()
    snapshot = tmp_path / "snapshot.bin"
    data = bytearray(snapshot.read_bytes())
    data[HEADER + FRAME + 2] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    with pytest.raises(WalCorruptError, match="snapshot.bin"):
        reopen_and_replay(tmp_path)

    snapshot.write_bytes(b"not a snapshot at all")
    with pytest.raises(WalCorruptError, match="snapshot.bin"):
        WriteAheadLog(tmp_path)


def test_missing_snapshot_under_a_compacted_log_is_a_hard_error(tmp_path: Path) -> None:
    wal, _ = reopen_and_replay(tmp_path)
    wal.compact([b"state"])
    wal.close()
    (tmp_path / "snapshot.bin").unlink()
    with pytest.raises(WalCorruptError, match="wal.log"):
        WriteAheadLog(tmp_path)


def test_durability_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="always, batch, none"):
        WriteAheadLog(tmp_path, durability="sometimes")
    for durability in ("always", "batch", "none"):
        write_session(tmp_path / durability, [b"r"], durability=durability)
        assert reopen_and_replay(tmp_path / durability)[1] == [b"r"]


def test_batch_sync_waits_for_the_interval(tmp_path: Path) -> None:
    clock = Clock(100.0)
    # Binary fractions, so the clock arithmetic below is exact.
    wal = WriteAheadLog(tmp_path, durability="batch", batch_interval_s=0.5, clock=clock)
    list(wal.replay())
    assert wal.time_until_sync() is None
    assert not wal.sync_if_due()  # clean: nothing to sync
    clock.now += 1.0
    wal.append(b"a")
    assert wal.time_until_sync() == 0.0  # last sync is long past, so this one is due at once
    assert wal.sync_if_due()
    assert wal.time_until_sync() is None
    wal.append(b"b")
    assert wal.time_until_sync() == 0.5
    assert not wal.sync_if_due()
    clock.now += 0.25
    assert wal.time_until_sync() == 0.25
    assert not wal.sync_if_due()
    clock.now += 0.25
    assert wal.sync_if_due()
    assert not wal.sync_if_due()
    wal.close()


def test_batch_sync_with_the_real_clock(tmp_path: Path) -> None:
    interval = 0.01
    wal, _ = reopen_and_replay(tmp_path, batch_interval_s=interval)
    wal.append(b"a")
    first_sync = None
    deadline = time.monotonic() + 5
    while first_sync is None:
        assert time.monotonic() < deadline, "batch fsync never came due"
        if wal.sync_if_due():
            first_sync = time.monotonic()
    wal.append(b"b")
    while not wal.sync_if_due():
        assert time.monotonic() < deadline, "batch fsync never came due"
        timeout = wal.time_until_sync()
        assert timeout is not None and timeout <= interval
    assert time.monotonic() - first_sync >= interval
    wal.close()


@pytest.mark.parametrize("durability", ["always", "none"])
def test_other_modes_never_have_a_sync_pending(tmp_path: Path, durability: str) -> None:
    wal, _ = reopen_and_replay(tmp_path, durability=durability, batch_interval_s=0.0)
    wal.append(b"a")
    assert wal.time_until_sync() is None
    assert not wal.sync_if_due()
    wal.close()


def test_syncs_counts_what_each_mode_fsyncs(tmp_path: Path) -> None:
    clock = Clock(100.0)
    counts = {}
    for durability in ("always", "batch", "none"):
        wal = WriteAheadLog(tmp_path / durability, durability=durability, batch_interval_s=0.5, clock=clock)
        for _ in range(4):
            wal.append(b"x")
            wal.sync_if_due()
        clock.now += 1.0
        wal.sync_if_due()
        counts[durability] = wal.syncs
        assert wal.durability == durability
        wal.close()
        assert wal.syncs == counts[durability], "the close's sync is not one of the mode's"
    assert counts == {"always": 4, "batch": 1, "none": 0}


def test_needs_compaction_past_threshold(tmp_path: Path) -> None:
    wal, _ = reopen_and_replay(tmp_path, compact_threshold_bytes=1000)
    wal.append(b"x" * 500)
    assert not wal.needs_compaction()
    wal.append(b"x" * 500)
    assert wal.needs_compaction()
    wal.compact([b"x"])
    assert not wal.needs_compaction()
    wal.close()


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    wal, _ = reopen_and_replay(tmp_path)
    wal.append(b"a")
    wal.close()
    wal.close()
    assert not wal.sync_if_due() and wal.time_until_sync() is None
    with pytest.raises(ValueError, match="closed"):
        wal.append(b"b")


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cbctl.runtime.store.wal import WriteAheadLog

    wal = WriteAheadLog(Path(sys.argv[1]), durability="batch", batch_interval_s=3600)
    list(wal.replay())
    i = 0
    while True:
        wal.append(b"record-%d" % i)
        print("acked", i, flush=True)
        i += 1
    """
)


def test_every_acked_record_survives_sigkill(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT,
    )
    output = b""
    try:
        deadline = time.monotonic() + 30
        while output.count(b"\n") < 500:  # kill it mid-stream, while it is still appending
            remaining = deadline - time.monotonic()
            assert remaining > 0, "child did not ack 500 records in time"
            if select.select([child.stdout], [], [], remaining)[0]:
                chunk = os.read(child.stdout.fileno(), 65536)
                assert chunk, f"child exited early: {child.stderr.read().decode()}"
                output += chunk
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
        output += rest
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    # Only complete lines count: the kill can land while the child's stdout buffer is half flushed.
    acked = output.split(b"\n")[:-1]
    assert acked == [b"acked %d" % i for i in range(len(acked))]
    last_acked = len(acked) - 1

    wal, replayed = reopen_and_replay(tmp_path)
    wal.close()
    # Every acked record, in order; at most one more that was written but not yet acked when it died.
    assert replayed[: last_acked + 1] == [b"record-%d" % i for i in range(last_acked + 1)]
    assert len(replayed) <= last_acked + 2
