"""Who may talk to a cluster: CurveZMQ keys (RFC 26), a ZAP allow-list (RFC 27) and roles.

Every ROUTER of a cluster (each node's, the controller's) is a CurveZMQ server with the
cluster's one server key pair; every DEALER that connects to one (a node's to its peers,
the controller's, a client's) is a CurveZMQ client with a key pair of its own. Traffic is
encrypted, and a ZAP handler in each serving process admits only the public keys in the
cluster's key dir. The handler names each connection by its key's role, which ZeroMQ
hands back with every message as the `User-Id` property:

- `node:<id>`: the key of node <id>; it may send peer frames as that node, nothing else;
- `admin`: the controller's and the `raftkv` CLI's; it may send anything;
- `client`: every other admitted key; reads and writes only (`CLIENT_OPS`).

A key dir (`raftkv up` makes DIR/keys, files mode 0600) holds ZeroMQ certificate files,
`<name>.key` (public) and `<name>.key_secret` (both halves):

    server   the cluster's server key pair (every node and the controller)
    admin    the admin key
    client   a client key (any other name is a client key too: client-alice, ...)
    node-<id>  each node's own key

A node run by hand needs the server key pair, its own key pair and every public key it
admits: a key dir with the other secrets left out will do. Public keys added later (a
node added by `add-node`, a new client) are admitted without a restart (`KeyDir`).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from raftkv.wire import ReqOp

ENV_CREDENTIALS = "RAFTKV_CREDENTIALS"  # a cluster dir, a key dir, or a key_secret file
KEYS_SUBDIR = "keys"  # where `raftkv up` keeps a cluster's keys, under its dir
SERVER, ADMIN, CLIENT = "server", "admin", "client"
NODE_PREFIX = "node-"
ROLE_ADMIN, ROLE_CLIENT = "admin", "client"
# What a client key may ask; the admin key may ask anything, a node key only peer frames.
CLIENT_OPS = frozenset({ReqOp.PUT, ReqOp.DELETE, ReqOp.CAS, ReqOp.TXN, ReqOp.OPEN_SESSION,
                        ReqOp.GET, ReqOp.GET_KV, ReqOp.WATCH, ReqOp.SCAN, ReqOp.GET_STALE,
                        ReqOp.STATUS, ReqOp.LEASE_GRANT, ReqOp.LEASE_REVOKE,
                        ReqOp.LEASE_KEEPALIVE, ReqOp.LEASE_INFO, ReqOp.LEASE_LIST,
                        ReqOp.OLDEST})


def refusal(role: str, op: ReqOp) -> str | None:
    """Why a connection of `role` (its ZAP User-Id) may not send a request of `op`, the
    FORBIDDEN reply's text; None if it may. The admin key may send anything, a client
    key `CLIENT_OPS`, a node key (or a role this module does not know) no request."""
    if role == ROLE_ADMIN or role == ROLE_CLIENT and op in CLIENT_OPS:
        return None
    who = "a client key" if role == ROLE_CLIENT else f"the key of {role or 'nobody'}"
    return f"{op.name} needs the admin key; this connection has {who}"


class CredentialsError(ValueError):
    """Keys that are missing, unreadable or not ZeroMQ certificates; the message says
    which file and what to do."""


def node_role(node_id: int) -> str:
    """The role (ZAP User-Id) of node `node_id`'s key."""
    return f"node:{node_id}"


def role_of(name: str) -> str | None:
    """The role of the key named `name` in a key dir; None for the server key, which no
    connection presents."""
    if name == SERVER:
        return None
    if name == ADMIN:
        return ROLE_ADMIN
    if name.startswith(NODE_PREFIX) and name[len(NODE_PREFIX):].isdigit():
        return node_role(int(name[len(NODE_PREFIX):]))
    return ROLE_CLIENT


@dataclass(frozen=True, slots=True)
class Credentials:
    """One CurveZMQ client's keys: its own pair, and the cluster's server public key
    (which the client checks the server against)."""

    public: bytes  # z85
    secret: bytes  # z85
    server_public: bytes  # z85

    @classmethod
    def load(cls, path: str | os.PathLike[str], name: str = CLIENT) -> Credentials:
        """The credentials at `path`: a `.key_secret` file (its server key is the
        `server.key` beside it), or a key dir, or a cluster dir (DIR/keys), whose key
        `name` is taken."""
        p = Path(path)
        if p.is_dir():
            pair = secret_file(p / KEYS_SUBDIR if (p / KEYS_SUBDIR).is_dir() else p, name)
        else:
            pair = p
        public, secret = _load_pair(pair)
        server_public, _ = _load_certificate(pair.parent / f"{SERVER}.key")
        return cls(public, secret, server_public)

    def apply(self, sock: zmq.Socket) -> None:
        """Make `sock` (before it connects) a CurveZMQ client with these keys."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_public


def secret_file(keys_dir: str | os.PathLike[str], name: str) -> Path:
    """Where key pair `name` of a key dir is (both halves)."""
    return Path(keys_dir) / f"{name}.key_secret"


def use_credentials(keys_dir: str | os.PathLike[str], name: str = ADMIN) -> None:
    """Name key `name` of `keys_dir` in $RAFTKV_CREDENTIALS: every client, rpc call and
    load socket of this process, and of the processes it starts, presents it from then
    on (how the harness's tools speak for the operator)."""
    os.environ[ENV_CREDENTIALS] = str(secret_file(keys_dir, name))


def credentials_from_env() -> Credentials | None:
    """The client credentials $RAFTKV_CREDENTIALS names, or None when it is unset.
    CredentialsError if it names something that holds no keys."""
    path = os.environ.get(ENV_CREDENTIALS)
    if not path:
        return None
    return Credentials.load(path)


def present(sock: zmq.Socket, credentials: Credentials | None = None) -> None:
    """Make `sock` (before it connects) present `credentials`, or those of
    $RAFTKV_CREDENTIALS; with neither it connects without keys."""
    credentials = credentials or credentials_from_env()
    if credentials is not None:
        credentials.apply(sock)


class KeyDir:
    """The public keys a server admits, by role, read from a key dir, and read again when
    an unknown key knocks and the dir has changed since (a key added: `add-node`, a new
    client). A refused handshake is final for that connection (ZeroMQ does not retry an
    authentication failure), so a key must be in the dir before it is first used."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # the ZAP thread reads; `rescan` may run anywhere
        self._roles: dict[bytes, str] = {}
        self._version = -1  # the dir's mtime (ns) when it was read
        self.rescan()

    def _dir_version(self) -> int:
        try:
            return self.path.stat().st_mtime_ns
        except OSError as e:
            raise CredentialsError(f"cannot read key dir {self.path}: {e}") from e

    def rescan(self) -> None:
        version = self._dir_version()
        roles: dict[bytes, str] = {}
        for f in sorted(self.path.glob("*.key")):
            role = role_of(f.stem)
            if role is None:
                continue
            public, _ = _load_certificate(f)
            roles[public] = role
        with self._lock:
            self._roles, self._version = roles, version

    def role(self, public_z85: bytes) -> str | None:
        """The role of an admitted public key (z85), or None if it is not admitted."""
        with self._lock:
            role, version = self._roles.get(public_z85), self._version
        if role is None:
            try:
                if self._dir_version() != version:
                    self.rescan()
            except CredentialsError:
                return None
            with self._lock:
                role = self._roles.get(public_z85)
        return role


class ServerKeys:
    """What a serving process (a node, the controller) needs: the cluster's server key
    pair, the keys it admits, and its own client credentials for the DEALERs it connects
    (a node's key to its peers; the admin key for the controller)."""

    def __init__(self, keys_dir: str | os.PathLike[str], own: str) -> None:
        self.path = Path(keys_dir)
        if not self.path.is_dir():
            raise CredentialsError(f"key dir {self.path} does not exist (`raftkv up` makes "
                                   f"one in DIR/{KEYS_SUBDIR}; or pass --insecure)")
        self.server_public, self.server_secret = _load_pair(secret_file(self.path, SERVER))
        self.client = Credentials.load(secret_file(self.path, own))
        self.admitted = KeyDir(self.path)
        self._auth: _Authenticator | None = None

    def serve(self, sock: zmq.Socket) -> None:
        """Make `sock` (a ROUTER, before it binds) a CurveZMQ server admitting our keys,
        starting this context's ZAP handler on first use."""
        if self._auth is None:
            self._auth = _Authenticator(sock.context, self.admitted)
            self._auth.start()
            self._auth.configure_curve_callback("*", self._auth)
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.curve_server = True

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler, admitting the keys of a KeyDir and naming each connection by
    its key's role (the messages' User-Id)."""

    def __init__(self, context: zmq.Context, admitted: KeyDir) -> None:
        super().__init__(context)
        self.admitted = admitted

    def callback(self, domain: str, key: bytes) -> bool:  # the credentials provider
        return self.admitted.role(key) is not None

    def curve_user_id(self, client_public_key: bytes) -> str:
        role = self.admitted.role(zmq.utils.z85.encode(client_public_key))
        return role or ""


def make_keys(keys_dir: Path, node_ids: list[int]) -> None:
    """A new cluster's key dir: the server, admin and client key pairs and one per node.
    The dir is mode 0700 and every file 0600."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    for name in (SERVER, ADMIN, CLIENT, *(f"{NODE_PREFIX}{i}" for i in node_ids)):
        make_key(keys_dir, name)


def make_key(keys_dir: Path, name: str) -> None:
    """Key pair `name` in `keys_dir` (kept if it exists), files mode 0600."""
    if secret_file(keys_dir, name).exists():
        return
    old = os.umask(0o077)
    try:
        made = zmq.auth.create_certificates(keys_dir, name)
    finally:
        os.umask(old)
    for f in made:
        os.chmod(f, 0o600)


def _load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise CredentialsError(f"cannot read key file {path}: {e}") from e


def _load_pair(path: Path) -> tuple[bytes, bytes]:
    public, secret = _load_certificate(path)
    if secret is None:
        raise CredentialsError(f"{path} holds no secret key (a .key_secret file does)")
    return public, secret
