"""A damaged data dir on one node of a live cluster, end to end with real processes.

Failure models: a torn tail (the last record of the WAL cut short, as a power cut leaves
an unsynced write) and bit rot (one flipped bit in an acknowledged, synced record in the
middle of the WAL). Both are made by editing the files of a node killed with SIGKILL.
"""

from __future__ import annotations

from pathlib import Path

from harness.launcher import wait_for
from raftkv import Client
from raftkv.raft.types import Entry, EntryType, HardState
from raftkv.storage.record import entries_record, frame_all, hard_state_record, truncate_record
from raftkv.wire import ReplyCode, ReqOp
from tests.unit.wal_files import last_crc, record_offsets, records_end, segments


def stale_get(cluster, i: int, key: bytes) -> bytes | None:
    r = cluster.request(i, ReqOp.GET_STALE, key=key)
    assert r is not None and r.code == ReplyCode.OK
    return r.value


def applied(cluster, i: int) -> int:
    return (cluster.status(i) or {}).get("applied_index", -1)


def record_holding(seg: Path, needle: bytes) -> tuple[int, int]:
    """[start, end) of the last record of `seg` whose bytes hold `needle`."""
    buf = seg.read_bytes()
    at = buf.rindex(needle)
    starts = record_offsets(seg)
    start = max(s for s in starts if s <= at)
    later = [s for s in starts if s > start]
    return start, later[0] if later else records_end(seg)


def test_a_node_whose_last_record_is_torn_comes_back_and_catches_up(cluster):
    """Finding 1, end to end. A power cut tore the node's last write, never synced and
    so never acknowledged: the next batch of entries, whose value held bytes of valid
    records. The node must start, drop the torn tail and catch up."""
    leader = cluster.wait_leader()
    victim = next(i for i in cluster.nodes if i != leader)
    records, _ = frame_all([hard_state_record(HardState(7, 2, 1)), truncate_record(3)], 0)
    poison = b"P" * 5 + records * 40
    with Client(cluster.addresses, timeout=10) as kv:
        for n in range(50):
            kv.put(f"k{n}", f"v{n}")
        target = cluster.status(leader)["commit_index"]
        wait_for(lambda: applied(cluster, victim) >= target, 10, "the victim to apply")
        st = cluster.status(victim)
        cluster.kill(victim)
        seg = segments(cluster.nodes[victim].data_dir)[-1]
        unsynced, _ = frame_all([entries_record(
            [Entry(st["term"], st["last_index"] + 1, EntryType.NORMAL, poison)])],
            last_crc(seg))
        end = records_end(seg)
        with open(seg, "r+b") as f:  # half of it reached the disk
            f.seek(end)
            f.write(unsynced[: len(unsynced) // 2])
            f.truncate(end + len(unsynced) // 2)
        kv.put("poison", poison)
        for n in range(50, 80):
            kv.put(f"k{n}", f"v{n}")
        cluster.start(victim)
        target = cluster.status(cluster.wait_leader())["commit_index"]
        wait_for(lambda: applied(cluster, victim) >= target, 15, "the torn node to catch up")
        assert stale_get(cluster, victim, b"poison") == poison
        assert stale_get(cluster, victim, b"k79") == b"v79"
        for n in range(80):
            assert kv.get(f"k{n}") == f"v{n}".encode()
    assert list(cluster.nodes[victim].data_dir.glob("*.broken"))


def test_a_node_with_a_rotten_record_repairs_itself_and_never_serves_the_rot(cluster):
    leader = cluster.wait_leader()
    victim = next(i for i in cluster.nodes if i != leader)
    with Client(cluster.addresses, timeout=10) as kv:
        for n in range(100):
            kv.put(f"k{n}", f"value-{n:04d}")
        target = cluster.status(leader)["commit_index"]
        wait_for(lambda: applied(cluster, victim) >= target, 10, "the victim to apply")
        cluster.kill(victim)
        seg = segments(cluster.nodes[victim].data_dir)[-1]
        start, _ = record_holding(seg, b"value-0042")
        buf = bytearray(seg.read_bytes())
        at = buf.index(b"value-0042", start)
        buf[at + 6] ^= 0x01  # "value-0042" -> "value-1042"
        seg.write_bytes(bytes(buf))
        cluster.start(victim)
        for n in range(100, 150):  # the cluster serves every write meanwhile
            kv.put(f"k{n}", f"value-{n:04d}")
        st = wait_for(lambda: (lambda s: s if s and s.get("repair") is None
                               and s["applied_index"] >= target else None)(
            cluster.status(victim)), 20, "the victim to repair itself")
        assert st["role"] in ("follower", "leader")
        target = cluster.status(cluster.wait_leader())["commit_index"]
        wait_for(lambda: applied(cluster, victim) >= target, 15, "the victim to catch up")
        assert stale_get(cluster, victim, b"k42") == b"value-0042"
        for n in range(150):
            assert kv.get(f"k{n}") == f"value-{n:04d}".encode()
    log = cluster.nodes[victim].log_path.read_text()
    assert "REPAIR" in log and "repair finished" in log
    assert b"value-1042" not in b"".join(
        stale_get(cluster, i, b"k42") or b"" for i in cluster.nodes)
