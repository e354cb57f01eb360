"""raftkv.security without sockets: who may ask what, and which keys a key dir admits."""

from __future__ import annotations

import stat

import pytest
import zmq.auth

from raftkv.security import (
    CLIENT_OPS,
    KeyDir,
    ServerKeys,
    make_key,
    make_keys,
    refusal,
)
from raftkv.wire import ReqOp


@pytest.mark.parametrize("op", list(ReqOp))
def test_admin_may_ask_anything_a_client_its_ops_a_node_nothing(op: ReqOp) -> None:
    assert refusal("admin", op) is None
    assert (refusal("client", op) is None) == (op in CLIENT_OPS)
    assert refusal("node:2", op) == f"{op.name} needs the admin key; this connection has " \
                                    "the key of node:2"
    assert refusal("", op) is not None  # a connection ZAP named nobody


def test_a_client_key_may_not_partition_or_reconfigure() -> None:
    for op in (ReqOp.FAULT, ReqOp.PEERS, ReqOp.TRANSFER, ReqOp.CONF_CHANGE, ReqOp.CONTROL):
        assert refusal("client", op) == f"{op.name} needs the admin key; this connection " \
                                        "has a client key"


def test_make_keys_leaves_secrets_to_the_owner_alone(tmp_path) -> None:
    keys = tmp_path / "keys"
    make_keys(keys, [1, 2])
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    files = sorted(p.name for p in keys.iterdir())
    assert files == sorted(f"{n}.{ext}" for n in ("admin", "client", "server", "node-1",
                                                  "node-2") for ext in ("key", "key_secret"))
    assert {stat.S_IMODE(p.stat().st_mode) for p in keys.iterdir()} == {0o600}


def test_a_key_dir_admits_its_keys_by_role_and_a_key_added_later(tmp_path) -> None:
    make_keys(tmp_path, [1])
    admitted = KeyDir(tmp_path)

    def public(name: str) -> bytes:
        return zmq.auth.load_certificate(tmp_path / f"{name}.key")[0]

    assert admitted.role(public("admin")) == "admin"
    assert admitted.role(public("client")) == "client"
    assert admitted.role(public("node-1")) == "node:1"
    assert admitted.role(public("server")) is None  # no connection presents it
    make_key(tmp_path, "node-7")  # add-node's key, made after the dir was read
    assert admitted.role(public("node-7")) == "node:7"
    stranger, _ = zmq.auth.create_certificates(tmp_path.parent, "stranger")
    assert admitted.role(zmq.auth.load_certificate(stranger)[0]) is None


def test_server_keys_refuse_a_dir_without_keys_clearly(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        ServerKeys(tmp_path / "nowhere", own="admin")
    make_keys(tmp_path, [])
    with pytest.raises(ValueError, match="node-3.key_secret"):
        ServerKeys(tmp_path, own="node-3")
