"""Which cluster a `raftkv` verb talks to, and how: the one place that turns `--dir` or
`--endpoints` (with `--credentials`) into addresses, keys and a `raftkv.Client`.

- `--dir DIR` (env RAFTKV_DIR, default .raftkv): a cluster `raftkv up` made. Clients go
  through its controller; node addresses come from DIR/cluster.json; the verbs speak with
  the admin key of DIR/keys.
- `--endpoints H:P,H:P,...` (env RAFTKV_ENDPOINTS): nodes run by hand (`raftkv node`),
  each `HOST:PORT` or `tcp://HOST:PORT`, node ids 1..N in the order given, or
  `ID=HOST:PORT` for each to name them. Clients talk to the nodes themselves (the client
  finds the leader). Keys: `--credentials PATH` (env RAFTKV_CREDENTIALS): a `.key_secret`
  file, a key dir or a cluster dir; a dir gives its `admin` key if it holds one, else its
  `client` key. Without it the CLI connects with no keys (an `--insecure` cluster).

Precedence: a flag on the command line beats the other from the environment; both on the
command line, or both in the environment, is a usage error (exit 2), as is a malformed
endpoint. With neither, --dir's default applies (exit 3 when no cluster is there).

A verb gets its target with `cluster_target(cluster_dir)` (or a client with
harness.cli.with_client) once it carries `@dir_option` and `@target_options`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from raftkv.security import ADMIN, CLIENT, KEYS_SUBDIR, Credentials, CredentialsError, secret_file
from raftkv.server import EXIT_USAGE, fail

EXIT_UNAVAILABLE = 3  # no cluster in --dir, controller down, no leader in --timeout
ENV_ENDPOINTS = "RAFTKV_ENDPOINTS"
_META = "raftkv.target"  # where target_options leave what they parsed, in click's ctx.meta

F = TypeVar("F", bound=Callable[..., Any])


class EndpointsError(ValueError):
    """A malformed --endpoints value; the message names the bad part and the forms."""


_FORMS = "expected HOST:PORT or tcp://HOST:PORT, comma-separated, or ID=HOST:PORT for each"


def parse_address(text: str) -> str:
    """One endpoint as a ZeroMQ address, tcp://HOST:PORT (an IPv6 host in brackets)."""
    raw = text.strip()
    rest = raw.removeprefix("tcp://")
    if "://" in rest:
        raise EndpointsError(f"{raw!r}: only tcp:// endpoints are served; {_FORMS}")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise EndpointsError(f"{raw!r}: {_FORMS} (a port from 1 to 65535)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise EndpointsError(f"{raw!r}: an IPv6 host is written [ADDRESS]:PORT")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise EndpointsError(f"{raw!r}: {host} is not an IPv6 address") from None
    elif ":" in host or any(c.isspace() for c in host) or "/" in host:
        raise EndpointsError(f"{raw!r}: {host!r} is not a host name or address (an IPv6 "
                             "host is written [ADDRESS]:PORT)")
    return f"tcp://{host}:{int(port)}"


def parse_endpoints(text: str) -> dict[int, str]:
    """Node id -> tcp:// address of every endpoint in `text`: ids 1..N in order, or each
    named `ID=`. Either every item names its id or none does; ids and addresses are
    unique. EndpointsError otherwise."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise EndpointsError(f"no endpoint given; {_FORMS}")
    if not all(items):
        raise EndpointsError(f"{text!r}: an empty endpoint between commas")
    named = ["=" in item for item in items]
    if any(named) and not all(named):
        raise EndpointsError(f"{text!r}: name every endpoint's id (ID=HOST:PORT) or none")
    nodes: dict[int, str] = {}
    for position, item in enumerate(items, start=1):
        node_id = position
        if named[0]:
            ident, _, item = item.partition("=")
            ident = ident.strip()
            if not ident.isdigit() or int(ident) < 1:
                raise EndpointsError(f"{ident!r}: a node id is a whole number >= 1")
            node_id = int(ident)
            if node_id in nodes:
                raise EndpointsError(f"node id {node_id} is given twice")
        address = parse_address(item)
        if address in nodes.values():
            raise EndpointsError(f"{address} is given twice")
        nodes[node_id] = address
    return nodes


def load_credentials(path: str | Path) -> Credentials:
    """The keys at `path` (--credentials): a `.key_secret` file, or a key dir or cluster
    dir, whose admin key is taken if it has one (the membership and status verbs need
    it), else its client key. CredentialsError if there are none."""
    p = Path(path)
    if p.is_dir():
        keys = p / KEYS_SUBDIR if (p / KEYS_SUBDIR).is_dir() else p
        name = ADMIN if secret_file(keys, ADMIN).exists() else CLIENT
        return Credentials.load(keys, name)
    if not p.exists():
        raise CredentialsError(f"--credentials {p}: no such file or directory")
    return Credentials.load(p)


@dataclass(frozen=True)
class ClusterTarget:
    """A cluster as a verb reaches it. `nodes`: every known node's address by id (what
    STATUS, health and membership verbs ask one by one); `router`: the controller's
    address (a harness dir), or None to talk to the nodes straight."""

    nodes: dict[int, str]
    credentials: Credentials | None
    origin: str  # how the user named it: "--dir D" or "--endpoints", for messages
    router: str | None = None
    state: Any = field(default=None, compare=False)  # the ClusterState of a harness dir

    def client(self, timeout: float, **options: Any) -> Any:
        """A raftkv.Client for this cluster (through the controller of a harness dir)."""
        import raftkv

        return raftkv.Client(self.router or self.nodes, timeout=timeout,
                             credentials=self.credentials, **options)


def load_state(cluster_dir: Path) -> Any:
    """The harness cluster in `cluster_dir`; exits 3 if there is none. The process speaks
    with its admin key from then on (security.use_credentials)."""
    from harness.cluster_state import ClusterState

    try:
        state = ClusterState.load(cluster_dir)
    except ValueError as e:
        fail(str(e), EXIT_UNAVAILABLE)
    if state is None:
        fail(f"no cluster in {cluster_dir}; start one with: raftkv up --dir {cluster_dir}, "
             "or name nodes run by hand with --endpoints HOST:PORT,... (env "
             f"{ENV_ENDPOINTS})", EXIT_UNAVAILABLE)
    state.use_keys()  # the verbs speak with the admin key of --dir
    return state


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    ctx.meta.setdefault(_META, {})[param.name] = (value, ctx.get_parameter_source(param.name))


def target_options(f: F) -> F:
    """--endpoints and --credentials, for a verb that also has harness.cli's dir_option.
    They reach `cluster_target` through click's context, so a verb's signature does not
    change."""
    f = click.option(
        "--credentials", envvar="RAFTKV_CREDENTIALS", metavar="PATH", expose_value=False,
        callback=_remember,
        help="With --endpoints: the keys to present, a .key_secret file, or a key or "
             "cluster dir (its admin key, else its client key). Env RAFTKV_CREDENTIALS; "
             "none: no keys (an --insecure cluster).")(f)
    return click.option(
        "--endpoints", envvar=ENV_ENDPOINTS, metavar="H:P,...", expose_value=False,
        callback=_remember,
        help="Talk to these nodes (run by hand with `raftkv node`) instead of a --dir: "
             "HOST:PORT or tcp://HOST:PORT, comma-separated, node ids 1..N in that order, "
             f"or ID=HOST:PORT each. Env {ENV_ENDPOINTS}.")(f)


def _explicit(source: ParameterSource | None) -> int:
    """How strongly a value was given: 2 the command line, 1 the environment, 0 not."""
    if source == ParameterSource.COMMANDLINE:
        return 2
    return 1 if source == ParameterSource.ENVIRONMENT else 0


def cluster_target(cluster_dir: Path) -> ClusterTarget:
    """The cluster the running verb names (--endpoints or --dir, see the module's
    docstring), exiting 2 for a usage error and 3 for no cluster in --dir."""
    ctx = click.get_current_context()
    given = ctx.meta.get(_META, {})
    endpoints, endpoints_source = given.get("endpoints", (None, None))
    credentials, credentials_source = given.get("credentials", (None, None))
    dir_rank = _explicit(ctx.get_parameter_source("cluster_dir"))
    endpoints_rank = _explicit(endpoints_source) if endpoints else 0
    if endpoints_rank and endpoints_rank == dir_rank:
        where = "on the command line" if dir_rank == 2 else "in the environment"
        fail(f"both --dir and --endpoints are given {where}: name the cluster one way "
             "(--dir for a `raftkv up` cluster, --endpoints for nodes run by hand)",
             EXIT_USAGE)
    try:
        if endpoints_rank > dir_rank:
            creds = load_credentials(credentials) if credentials else None
            return ClusterTarget(parse_endpoints(endpoints), creds, "--endpoints")
        state = load_state(cluster_dir)
        # --credentials on the command line still wins over the dir's admin key.
        creds = (load_credentials(credentials) if _explicit(credentials_source) == 2
                 else state.credentials())
    except (EndpointsError, CredentialsError) as e:
        fail(str(e), EXIT_USAGE)
    return ClusterTarget(state.addresses, creds, f"--dir {cluster_dir}",
                         router=state.controller.address, state=state)
