"""A damaged write-ahead log as the user meets it: `cbctl up` refuses, saying where and what would be lost;
`cbctl up --salvage` starts with every intact key, keeps the damaged file and says what it dropped."""

from __future__ import annotations

import re
from pathlib import Path

from cbctl.errors import NoSuchKey
from tests.integration.test_lifecycle import assert_one_line_error


def test_a_flipped_byte_mid_log_stops_up_and_salvage_keeps_the_rest(start_cluster):
    handle = start_cluster(executors=1)
    client = handle.client()
    for i in range(30):
        client.put(f"key-{i:02d}", {"n": i, "pad": "x" * 20})
    handle.close_clients()
    handle.cli("down", check=True)
    log_path = handle.home / "data" / "wal.log"
    data = bytearray(log_path.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x01
    log_path.write_bytes(bytes(data))

    line = assert_one_line_error(handle.cli("up", "--executors", "1", timeout=90), str(log_path), "byte offset",
                                 "cbctl up --salvage")
    following = int(re.search(r"and (\d+) intact record\(s\) follow it", line)[1])
    offset = int(re.search(r"byte offset (\d+)", line)[1])
    assert 10 <= following <= 16 and offset <= middle, line
    assert log_path.read_bytes() == bytes(data), "a refused start leaves the log as it was"
    assert_one_line_error(handle.cli("status"), "no cluster is running")

    salvaged = handle.cli("up", "--executors", "1", "--salvage", check=True, timeout=90)
    warning = salvaged.stderr.strip()
    assert warning.startswith("warning: salvaged ") and str(log_path) in warning, salvaged.stderr
    assert "kept 29 intact records" in warning and f"at offset {offset}" in warning, warning
    kept = re.search(r"the damaged file is kept as (\S+)$", warning)[1]
    assert Path(kept).read_bytes() == bytes(data)

    client = handle.client()
    present = []
    for i in range(30):
        try:
            assert client.get(f"key-{i:02d}") == {"n": i, "pad": "x" * 20}
            present.append(i)
        except NoSuchKey:
            pass
    assert len(present) == 29, f"exactly the damaged record is lost, got {present}"
    client.put("after", 1)
    handle.close_clients()
    handle.cli("down", check=True)
    restarted = handle.cli("up", "--executors", "1", check=True, timeout=90)  # clean now, no flag needed
    assert "salvaged" not in restarted.stderr
    assert handle.cli("get", "after", check=True).stdout.strip() == "1"
