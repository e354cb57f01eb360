"""`Client.from_url` (raftkv/_requests.py parse_url): `raftkv://` URLs name one address
or the nodes' in id order, set options in the query, and every malformed one is a
ValueError that says what is wrong, before anything connects."""

from __future__ import annotations

import pytest

from raftkv._requests import parse_url
from raftkv.client import Client
from tests.unit import test_client as fakes
from tests.unit.test_client import FakeKV

ctx, node = fakes.ctx, fakes.node


def test_hosts_become_node_addresses_in_id_order() -> None:
    assert parse_url("raftkv://h1:7701,h2:7702,10.0.0.3:7703", {}) == (
        ["tcp://h1:7701", "tcp://h2:7702", "tcp://10.0.0.3:7703"], {})
    assert parse_url("raftkv://localhost:7700", {}) == ("tcp://localhost:7700", {})
    assert parse_url("raftkv://[::1]:7701", {}) == ("tcp://[::1]:7701", {})


def test_the_query_sets_options_and_arguments_may_not_repeat_them() -> None:
    _, kw = parse_url("raftkv://h:1?timeout=2.5&decode=true&attempt_timeout=0.1"
                      "&credentials=/tmp/c", {"context": None})
    assert kw == {"timeout": 2.5, "decode": True, "attempt_timeout": 0.1,
                  "credentials": "/tmp/c", "context": None}
    assert parse_url("raftkv://h:1?decode=0", {})[1] == {"decode": False}
    with pytest.raises(ValueError, match="timeout given both"):
        parse_url("raftkv://h:1?timeout=2", {"timeout": 3})


@pytest.mark.parametrize("url, why", [
    ("tcp://h:1", "scheme must be raftkv://, not tcp://"),
    ("h:1", "scheme must be raftkv://, not h://"),
    ("//h:1", "scheme must be raftkv://, not missing"),
    ("raftkv+tcp://h:1", "scheme"),
    ("raftkv://", "'' is not host:port"),
    ("raftkv://h1:7701,", "'' is not host:port"),
    ("raftkv://h1", "'h1' is not host:port"),
    ("raftkv://h1:port", "is not host:port"),
    ("raftkv://h1:0", "port in 1..65535"),
    ("raftkv://h1:70000", "port in 1..65535"),
    ("raftkv://h1:1/db", "no path"),
    ("raftkv://user@h1:1", "user name"),
    ("raftkv://h1:1#x", "fragment"),
    ("raftkv://h1:1?tmeout=2", "unknown parameter 'tmeout'"),
    ("raftkv://h1:1?timeout=soon", "timeout='soon'"),
    ("raftkv://h1:1?decode=maybe", "not a boolean"),
    ("raftkv://h1:1?timeout=1&timeout=2", "given twice"),
    ("raftkv://h1:1?junk", "unknown parameter 'junk'"),
    ("raftkv://h1:1?&", "sets nothing"),
])
def test_bad_urls_say_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(ValueError, match="bad raftkv URL") as e:
        parse_url(url, {})
    assert why in str(e.value)


def test_from_url_connects_and_serves(node) -> None:
    fake = node(FakeKV())
    port = fake.address.rsplit(":", 1)[1]
    with Client.from_url(f"raftkv://127.0.0.1:{port}?decode=1&timeout=3") as kv:
        assert kv.timeout == 3.0 and kv.decode is True
        kv.put("k", "v")
        assert kv.get("k") == "v"
    with Client.from_url(f"raftkv://127.0.0.1:{port},127.0.0.1:{port}") as kv:
        assert kv.addresses == (fake.address, fake.address)
    with pytest.raises(ValueError, match="timeout .* must be > 0"):
        Client.from_url(f"raftkv://127.0.0.1:{port}?timeout=0")
