"""The state's quota (issue 16): past it, the leader refuses a put with a clear error and
changes nothing; deletes still go through and make room. Real processes, a 1 MiB quota."""

from __future__ import annotations

import pytest

from harness.launcher import LocalCluster
from raftkv import Client, QuotaExceeded


def test_a_put_past_the_quota_is_refused_and_a_delete_makes_room(tmp_path):
    c = LocalCluster(3, tmp_path, extra_args=("--quota-bytes", str(1 << 20)))
    c.start_all()
    try:
        c.wait_leader()
        big = b"x" * (600 << 10)
        with Client(c.addresses, timeout=10) as kv:
            kv.put("a", big)
            with pytest.raises(QuotaExceeded, match="quota of 1,048,576"):
                kv.put("b", big)
            assert kv.get("b") is None and kv.get("a") == big
            kv.put("a", b"y" * (600 << 10))  # the same size again: no growth, taken
            assert kv.delete("a")
            kv.put("b", big)
            assert kv.get("b") == big
        leader = c.wait_leader()
        st = c.status(leader)
        assert st["counters"]["quota_refused"] == 1
        assert st["kv"]["quota_bytes"] == 1 << 20
    finally:
        c.close()
