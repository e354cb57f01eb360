"""The controller's supervisor: the node processes, cluster.json, and the commands that
take time, on a worker thread of their own (harness/controller.py starts it).

Everything here may block (a kill waits for the process to go, add-node for the new node
to listen and for the leader to commit it), so none of it runs on the router's loop
(harness/router.py), which keeps serving clients meanwhile. The supervisor owns its own
ZeroMQ sockets: the supervisor's end of the inproc PAIR to the router, and one DEALER
per node for the membership requests it makes itself (harness/handoff.py has the
contract). It runs one command at a time, in the order the router handed them over.

Health. Every TICK_S it reaps the node processes it started (keeping each one's exit
code), takes in pids that others recorded in cluster.json (`raftkv up` restarting a
node), samples each node's process with psutil (cpu_percent over HEALTH_S), records the
first start of nodes that answered the router's polls (cluster_state.FIRST_START_FLAGS),
and publishes the sample whole (`Shared.health`). It publishes again after every
command, before answering it, so the router's status after an answer shows its effect.
Processes are only ever signalled through `cluster_state` helpers that check the create
time recorded in cluster.json.

Commands: a CONTROL request `[name, args]`, answered OK with a small map, or
BAD_REQUEST / UNAVAILABLE with a message (`status` and `events` are the router's):

    kill-leader              -> {"killed": id, "term": term}   UNAVAILABLE if no leader
    kill N                   -> {"killed": N} | {"not_running": N}
    restart N                -> {"restarted": N, "pid": pid} | {"already_running": N}
    pause N / resume N       -> {"paused": N} / {"resumed": N}  BAD_REQUEST if not running
    partition G1 G2 ...      -> {"groups": [[ids], ...]}  (unlisted nodes: one more group)
    heal                     -> {"healed": [ids]}
    transfer-leader N        -> {"transferring_to": N, "from": leader}, or the leader's
                                own refusal relayed as it came
    add-node [N]             -> {"added": N, "address", "pid", "index", "voters",
                                "learners"} once the leader committed N as a learner
                                (N: the next unused id); the node is started first,
                                and the supervisor waits until it listens, trying
                                another port if it could not bind
    promote N                -> {"promoted": N, "index", "voters", "learners"}
    remove-node N            -> {"removed": N, "stopped": bool, "index", "voters",
                                "learners"}: committed, then the process is stopped and
                                the node dropped from cluster.json (its data dir stays)

A group is "1,2" (str) or 3 (int). A partition is the set of nodes each node must drop;
the supervisor decides it, and the router delivers it (FAULT requests, re-sent every
poll while it stands, so a restarted node is cut off again until `heal`).

Membership requests. transfer-leader, add-node, promote and remove-node ask the leader
(the one the router believes in, `Shared.cluster`) with a TRANSFER or CONF_CHANGE
request on the supervisor's own DEALERs, and wait for its answer. These are the
supervisor's own requests, not a client's: it is their one retrying party, following a
NOT_LEADER hint or waiting out an election until CHANGE_DEADLINE_S (a retry of a change
already in force is answered OK by the node). After a change every node's command line
in cluster.json names every member as a peer, and the router is told the members
(handoff.Members). A node's command line loses --new/--join once it has been seen up: an
added node's once it listens, any other's once it answered a poll.
"""

from __future__ import annotations

import itertools
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import psutil
import zmq

from harness import cluster_state
from harness.cluster_state import FILE_NAME, ClusterState, NodeEntry
from harness.handoff import PAIR_ADDRESS, STOP, Answer, Command, Members, Shared
from harness.launcher import free_ports, port_in_use
from raftkv import wire
from raftkv.raft import ConfOp
from raftkv.security import NODE_PREFIX, ServerKeys, make_key
from raftkv.transport import connect_dealer
from raftkv.wire import ClientReply, ClientRequest, ReplyCode, ReqOp

log = logging.getLogger("raftkv.controller")

TICK_S = 0.2  # reaping, cluster.json reload, liveness and the published sample
HEALTH_S = 1.0  # psutil cpu_percent is measured over this
KILL_WAIT_S = 2.0  # how long a kill waits for the process to disappear
JOINER_ATTEMPTS = 3  # add-node: ports tried for the new node
JOINER_START_S = 10.0  # add-node: how long the new node may take to listen
CHANGE_DEADLINE_S = 10.0  # a membership request no leader took by then is UNAVAILABLE
ATTEMPT_S = 1.0  # a membership request unanswered this long goes to the leader known now
RETRY_S = 0.05  # the wait before asking again while no leader is known
DEALER_ID = b"sup"
HWM = 1_000


class CommandError(Exception):
    """A command that cannot be carried out: answered with `code` and the message."""

    def __init__(self, code: ReplyCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NodeProcess:
    """The supervisor's psutil handle on one node's process."""

    __slots__ = ("process", "key", "cpu_percent", "exited")

    def __init__(self) -> None:
        self.process: psutil.Process | None = None
        self.key: tuple[int, float] = (0, 0.0)  # (pid, create_time) `process` was made for
        self.cpu_percent: float | None = None
        # (pid, exit code) of the last node process we started that exited; its health
        # shows the code while that pid is the node's recorded one.
        self.exited: tuple[int, int] | None = None


# A command's handler: its arguments -> its answer (a small map).
CommandHandler = Callable[["Supervisor", tuple], dict[str, Any]]


class Supervisor:
    """The supervisor's state and worker loop. `run` is its only driver, on the
    supervisor's thread; the constructor runs on the thread that builds the controller,
    before `run` starts."""

    def __init__(self, state: ClusterState, context: zmq.Context, shared: Shared,
                 keys: ServerKeys | None) -> None:
        self.state = state
        self.context = context
        self.shared = shared
        self.keys = keys
        self.stopping = False
        # An instance copy, so a test can add a command of its own.
        self.commands: dict[str, CommandHandler] = dict(COMMANDS)
        self.procs: dict[int, NodeProcess] = {n.id: NodeProcess() for n in state.nodes}
        self.dealers: dict[int, zmq.Socket] = {}
        self.request_ids = itertools.count(1)
        # (node id, Popen) of the node processes we started, reaped every tick.
        self.children: list[tuple[int, Any]] = []
        self.state_mtime = self.read_state_mtime()
        self.last_cpu = 0.0
        self.pair = context.socket(zmq.PAIR)
        self.pair.bind(PAIR_ADDRESS)
        for n in state.nodes:
            self.connect(n)
        self.tick(time.monotonic())

    def connect(self, entry: NodeEntry) -> None:
        self.dealers[entry.id] = connect_dealer(
            self.context, entry.address, routing_id=DEALER_ID, hwm=HWM,
            credentials=self.keys.client if self.keys else None)

    def close(self) -> None:
        for d in self.dealers.values():
            d.close(linger=0)
        self.pair.close(linger=0)

    # ---- the loop ------------------------------------------------------------------

    def run(self) -> None:
        next_tick = time.monotonic() + TICK_S
        while not self.stopping:
            if self.pair.poll(max(0, int((next_tick - time.monotonic()) * 1000)) + 1):
                msg = self.pair.recv_pyobj()
                if msg == STOP:
                    return
                if isinstance(msg, Command):
                    self.pair.send_pyobj(self.carry_out(msg))
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                self.tick(now)

    def carry_out(self, cmd: Command) -> Answer:
        """Run one command; its answer (the sample is published first)."""
        handler = self.commands.get(cmd.name)
        faults = None
        try:
            if handler is None:
                raise CommandError(ReplyCode.BAD_REQUEST,
                                   f"unknown command {cmd.name!r}; commands: "
                                   f"{', '.join(sorted([*self.commands, 'status', 'events']))}")
            value = handler(self, cmd.args)
            faults = value.pop("_faults", None)
            code = ReplyCode.OK
        except CommandError as e:
            code, value = e.code, e.message
        except (psutil.Error, OSError) as e:
            log.warning("command %s %s failed: %s", cmd.name, list(cmd.args), e)
            code, value = ReplyCode.UNAVAILABLE, f"{cmd.name} failed: {e}"
        except Exception as e:  # a bug: the command fails, the controller stays up
            log.exception("command %s %s", cmd.name, list(cmd.args))
            code, value = ReplyCode.UNAVAILABLE, f"{cmd.name} failed: {e!r}"
        self.tick(time.monotonic())
        return Answer(cmd, int(code), value, faults)

    # ---- health --------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self.reap_children()
        self.maybe_reload_state()
        self.record_first_starts()
        sample_cpu = now - self.last_cpu >= HEALTH_S
        if sample_cpu:
            self.last_cpu = now
        health = {}
        for n in self.state.nodes:
            proc = self.procs.setdefault(n.id, NodeProcess())
            p = self.refresh_process(n, proc)
            if p is not None and sample_cpu:
                try:
                    proc.cpu_percent = p.cpu_percent(None)
                except psutil.Error:
                    proc.cpu_percent = None
            health[n.id] = {
                "address": n.address, "pid": n.pid, "create_time": n.create_time,
                "alive": p is not None,
                "cpu_percent": proc.cpu_percent if p is not None else None,
                "exit_code": proc.exited[1] if proc.exited and proc.exited[0] == n.pid
                             else None,
                **process_health(p),
            }
        self.shared.health = health

    def refresh_process(self, entry: NodeEntry, proc: NodeProcess) -> psutil.Process | None:
        """The node's process if it runs, keeping the same psutil object while the pid and
        create time in cluster.json do not change (cpu_percent measures between calls)."""
        key = (entry.pid, entry.create_time)
        p = proc.process
        if p is not None and key == proc.key:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    return p
            except psutil.Error:
                pass
            proc.process = None
            return None
        proc.key = key
        proc.process = cluster_state.live_process(*key)
        proc.cpu_percent = None
        if proc.process is not None:
            try:
                proc.process.cpu_percent(None)  # the baseline; the next call measures
            except psutil.Error:
                proc.process = None
        return proc.process

    def running_process(self, name: str, node_id: int) -> psutil.Process:
        p = self.refresh_process(self.state.node(node_id), self.procs[node_id])
        if p is None:
            raise CommandError(ReplyCode.BAD_REQUEST, f"{name}: node {node_id} is not running")
        return p

    def reap_children(self) -> None:
        """Collect node processes we started that exited, keeping each one's code."""
        running = []
        for node_id, child in self.children:
            code = child.poll()
            if code is None:
                running.append((node_id, child))
            elif node_id in self.procs:
                self.procs[node_id].exited = (child.pid, code)
                log.info("node %d (pid %d) exited with code %d", node_id, child.pid, code)
        self.children = running

    def record_first_starts(self) -> None:
        """Drop --new/--join from the command lines of nodes that answered a poll."""
        answered = self.shared.cluster.answered
        fresh = {n.id for n in self.state.nodes
                 if n.id in answered and cluster_state.is_first_start(n.argv)}
        if fresh and cluster_state.record_first_starts(self.state, fresh):
            self.state_mtime = self.read_state_mtime()

    def read_state_mtime(self) -> float:
        try:
            return (self.state.dir / FILE_NAME).stat().st_mtime
        except OSError:
            return 0.0

    def maybe_reload_state(self) -> None:
        """Take in pids recorded by others (`raftkv up` restarting a node)."""
        mtime = self.read_state_mtime()
        if mtime == self.state_mtime:
            return
        self.state_mtime = mtime
        try:
            fresh = ClusterState.load(self.state.dir)
        except ValueError as e:
            log.warning("ignoring unreadable cluster state: %s", e)
            return
        if fresh is None:
            return
        ids = {n.id for n in self.state.nodes}
        for n in fresh.nodes:
            if n.id in ids:
                entry = self.state.node(n.id)
                entry.pid, entry.create_time = n.pid, n.create_time
                entry.argv, entry.log = n.argv, n.log

    def save_node_pid(self, node_id: int, pid: int, created: float) -> None:
        """Record a restarted node in cluster.json, keeping whatever else changed there."""
        entry = self.state.node(node_id)
        entry.pid, entry.create_time = pid, created
        try:
            fresh = ClusterState.load(self.state.dir)
        except ValueError:
            fresh = None
        target = fresh if fresh is not None else self.state
        target.node(node_id).pid, target.node(node_id).create_time = pid, created
        target.save()
        self.state_mtime = self.read_state_mtime()

    # ---- arguments -----------------------------------------------------------------

    def node_arg(self, name: str, args: tuple) -> int:
        """The single node id argument of `name`, checked."""
        if len(args) != 1:
            raise CommandError(ReplyCode.BAD_REQUEST,
                               f"{name} takes one node id, got {len(args)} arguments")
        return self.parse_id(name, args[0])

    def parse_id(self, name: str, arg: int | str) -> int:
        if type(arg) is str and arg.strip().isdigit():
            arg = int(arg)
        if type(arg) is not int:
            raise CommandError(ReplyCode.BAD_REQUEST, f"{name}: {arg!r:.40} is not a node id")
        if arg not in self.procs:
            raise CommandError(ReplyCode.BAD_REQUEST,
                               f"{name}: unknown node {arg}; nodes: "
                               f"{', '.join(str(i) for i in sorted(self.procs))}")
        return arg

    @staticmethod
    def no_args(name: str, args: tuple) -> None:
        if args:
            raise CommandError(ReplyCode.BAD_REQUEST, f"{name} takes no arguments")

    # ---- processes -----------------------------------------------------------------

    def command_kill_leader(self, args: tuple) -> dict[str, Any]:
        self.no_args("kill-leader", args)
        view = self.shared.cluster
        if not view.leader:
            raise CommandError(ReplyCode.UNAVAILABLE, "no leader to kill")
        if not self.kill_node(view.leader):
            raise CommandError(ReplyCode.UNAVAILABLE,
                               f"no leader to kill: node {view.leader} is not running")
        return {"killed": view.leader, "term": view.term}

    def command_kill(self, args: tuple) -> dict[str, Any]:
        node_id = self.node_arg("kill", args)
        if self.kill_node(node_id):
            return {"killed": node_id}
        return {"not_running": node_id}

    def kill_node(self, node_id: int) -> bool:
        entry = self.state.node(node_id)
        if not cluster_state.signal_process(entry.pid, entry.create_time, signal.SIGKILL):
            return False
        # SIGKILL is asynchronous: wait until the process is gone (or a zombie), so a
        # `restart` right after this answer finds it dead.
        cluster_state.wait_gone(entry.pid, entry.create_time, KILL_WAIT_S)
        log.info("killed node %d (pid %d)", node_id, entry.pid)
        self.procs[node_id].process = None
        self.reap_children()
        return True

    def command_restart(self, args: tuple) -> dict[str, Any]:
        node_id = self.node_arg("restart", args)
        if self.refresh_process(self.state.node(node_id), self.procs[node_id]) is not None:
            return {"already_running": node_id}
        self.maybe_reload_state()  # the command line as `up` last settled it
        entry = self.state.node(node_id)
        child = cluster_state.spawn(entry.argv, self.state.dir / entry.log, detach=True)
        self.children.append((node_id, child))
        self.save_node_pid(node_id, child.pid, cluster_state.create_time(child.pid))
        log.info("restarted node %d as pid %d", node_id, child.pid)
        return {"restarted": node_id, "pid": child.pid}

    def command_pause(self, args: tuple) -> dict[str, Any]:
        node_id = self.node_arg("pause", args)
        self.running_process("pause", node_id).suspend()
        return {"paused": node_id}

    def command_resume(self, args: tuple) -> dict[str, Any]:
        node_id = self.node_arg("resume", args)
        self.running_process("resume", node_id).resume()
        return {"resumed": node_id}

    # ---- faults --------------------------------------------------------------------

    def command_partition(self, args: tuple) -> dict[str, Any]:
        groups = self.parse_groups("partition", args)
        everyone = frozenset(self.procs)
        faults = {node_id: everyone - group for group in groups for node_id in group}
        return {"groups": [sorted(g) for g in groups], "_faults": faults}

    def parse_groups(self, name: str, args: tuple) -> list[frozenset[int]]:
        """The groups named by `args`, plus one of the nodes no group names."""
        if not args:
            raise CommandError(ReplyCode.BAD_REQUEST,
                               f"{name} takes groups of node ids, e.g. '1,2' '3'")
        groups: list[frozenset[int]] = []
        seen: set[int] = set()
        for arg in args:
            parts = arg.split(",") if type(arg) is str else [arg]
            group = frozenset(self.parse_id(name, p) for p in parts)
            if group & seen:
                raise CommandError(ReplyCode.BAD_REQUEST,
                                   f"{name}: node {min(group & seen)} is in two groups")
            seen |= group
            groups.append(group)
        rest = frozenset(self.procs) - seen
        if rest:
            groups.append(rest)
        return groups

    def command_heal(self, args: tuple) -> dict[str, Any]:
        self.no_args("heal", args)
        return {"healed": sorted(self.procs), "_faults": {}}

    # ---- requests to the leader ----------------------------------------------------

    def ask_leader(self, req: ClientRequest) -> tuple[int, Any]:
        """Have the leader serve `req` (TRANSFER or CONF_CHANGE); the id of the node that
        answered OK and its value. A refusal other than NOT_LEADER or UNAVAILABLE is the
        command's answer; no leader taking it by CHANGE_DEADLINE_S is UNAVAILABLE."""
        deadline = time.monotonic() + CHANGE_DEADLINE_S
        target, why = 0, "no leader known"
        while (left := deadline - time.monotonic()) > 0:
            if not target:
                target = self.shared.cluster.leader
            if not target or target not in self.dealers:
                target = 0
                time.sleep(min(RETRY_S, left))
                continue
            req.request_id = next(self.request_ids)
            reply = self.call(target, req, min(ATTEMPT_S, left))
            if reply is None:
                why, target = f"node {target} did not answer", 0
            elif reply.code == ReplyCode.OK:
                return target, reply.value
            elif reply.code in (ReplyCode.NOT_LEADER, ReplyCode.UNAVAILABLE):
                why = f"node {target}: {reply.value}"
                hint = reply.leader_hint if reply.code == ReplyCode.NOT_LEADER else 0
                alive = self.shared.health.get(hint, {}).get("alive")
                target = hint if hint != target and alive else 0
                if not target:
                    time.sleep(min(RETRY_S, max(0.0, deadline - time.monotonic())))
            else:
                raise CommandError(reply.code, str(reply.value))
        raise CommandError(ReplyCode.UNAVAILABLE,
                           f"no leader took {req.op.name} within {CHANGE_DEADLINE_S:g} s "
                           f"({why})")

    def call(self, node_id: int, req: ClientRequest, timeout: float) -> ClientReply | None:
        """Send `req` to one node and wait up to `timeout` for its reply (older replies
        on the same DEALER, to attempts given up on, are skipped)."""
        dealer = self.dealers[node_id]
        try:
            dealer.send(wire.encode_request(req), zmq.NOBLOCK)
        except zmq.Again:  # not connected
            time.sleep(min(RETRY_S, timeout))
            return None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not dealer.poll(int(left * 1000) + 1):
                return None
            try:
                replies = wire.decode_replies(dealer.recv())
            except wire.MalformedFrame:
                continue
            for reply in replies:
                if reply.request_id == req.request_id:
                    return reply
        return None

    def command_transfer_leader(self, args: tuple) -> dict[str, Any]:
        target = self.node_arg("transfer-leader", args)
        leader, _ = self.ask_leader(ClientRequest(0, ReqOp.TRANSFER, target=target))
        return {"transferring_to": target, "from": leader}

    # ---- membership (raftkv add-node / remove-node) --------------------------------

    def command_add_node(self, args: tuple) -> dict[str, Any]:
        """Start a new node that joins the cluster, and ask the leader to add it as a
        learner. Answered once the change is committed; `promote` makes it a voter."""
        if len(args) > 1:
            raise CommandError(ReplyCode.BAD_REQUEST, "add-node takes at most a node id")
        node_id = self.new_node_id(args[0] if args else None)
        data_dir = f"data/node{node_id}"
        if (self.state.dir / data_dir).exists():
            raise CommandError(ReplyCode.BAD_REQUEST,
                               f"add-node: {self.state.dir / data_dir} exists (a removed node's "
                               "data?); move it away or pick another id")
        entry, child = self.start_joiner(node_id, data_dir)
        self.state.nodes.append(entry)
        self.procs[node_id] = NodeProcess()
        self.connect(entry)
        self.save_members()
        log.info("started node %d as pid %d at %s; adding it as a learner", node_id,
                 child.pid, entry.address)
        _, value = self.ask_leader(ClientRequest(
            0, ReqOp.CONF_CHANGE, conf_op=int(ConfOp.ADD_LEARNER), target=node_id,
            address=entry.address))
        return {"added": node_id, "address": entry.address, "pid": child.pid, **value}

    def start_joiner(self, node_id: int, data_dir: str) -> tuple[NodeEntry, Any]:
        """Start node `node_id` with --join and wait until it listens; its entry records
        the command line of its later starts. A port that was free when picked can be
        taken before the node binds it (an outgoing connection's ephemeral port): then
        the node exits, and another port is tried."""
        address = self.new_node_address(node_id)
        if self.state.secure:  # the members admit its key once they reread the key dir
            make_key(self.state.keys_dir, f"{NODE_PREFIX}{node_id}")
        for _ in range(JOINER_ATTEMPTS):
            # Metrics like the others': on a free port if they have them.
            metrics_port = free_ports(1)[0] if self.state.nodes[0].metrics_port else 0
            argv = cluster_state.joiner_argv(self.state.nodes[0].argv, node_id, address,
                                             self.state.addresses, self.state.dir / data_dir,
                                             metrics_port)
            entry = NodeEntry(address, f"logs/node{node_id}.log", argv, id=node_id,
                              data_dir=data_dir, metrics_port=metrics_port)
            child = cluster_state.spawn(argv, self.state.dir / entry.log, detach=True)
            self.children.append((node_id, child))
            if wait_listening(child, int(address.rpartition(":")[2]), JOINER_START_S):
                entry.pid, entry.create_time = child.pid, cluster_state.create_time(child.pid)
                # Listening, so it has had its first start: cluster_state.FIRST_START_FLAGS.
                entry.argv = cluster_state.settled_argv(argv, self.state.initial_voters)
                return entry, child
            if child.poll() is None:
                child.kill()
            log.warning("node %d did not start at %s; trying another port", node_id, address)
            address = f"tcp://{address.removeprefix('tcp://').rpartition(':')[0]}:" \
                      f"{free_ports(1)[0]}"
        tail = (self.state.dir / f"logs/node{node_id}.log").read_text(
            errors="replace").splitlines()[-3:]
        raise CommandError(ReplyCode.UNAVAILABLE,
                           f"add-node: node {node_id} did not start; the end of its log: "
                           + " | ".join(tail))

    def command_promote(self, args: tuple) -> dict[str, Any]:
        node_id = self.node_arg("promote", args)
        _, value = self.ask_leader(ClientRequest(
            0, ReqOp.CONF_CHANGE, conf_op=int(ConfOp.PROMOTE), target=node_id))
        return {"promoted": node_id, **value}

    def command_remove_node(self, args: tuple) -> dict[str, Any]:
        """Ask the leader to remove a member; once that is committed, stop its process
        and forget it. (`raftkv remove-node` moves leadership away from it first.)"""
        node_id = self.node_arg("remove-node", args)
        if len(self.procs) == 1:
            raise CommandError(ReplyCode.BAD_REQUEST, "remove-node: cannot remove the last node")
        _, value = self.ask_leader(ClientRequest(
            0, ReqOp.CONF_CHANGE, conf_op=int(ConfOp.REMOVE), target=node_id))
        try:
            stopped = self.forget_node(node_id)
        except (psutil.Error, OSError) as e:
            raise CommandError(ReplyCode.UNAVAILABLE,
                               f"the change was made, but what follows failed: {e}") from e
        return {"removed": node_id, "stopped": stopped, **value}

    def forget_node(self, node_id: int) -> bool:
        """Stop a removed member's process and drop it from cluster.json (its data dir
        stays). Returns whether it was running."""
        entry = self.state.node(node_id)
        stopped = cluster_state.stop_process(entry.pid, entry.create_time, grace=KILL_WAIT_S)
        del self.procs[node_id]
        self.dealers.pop(node_id).close(linger=0)
        self.state.nodes.remove(entry)
        self.save_members()
        return stopped

    def new_node_id(self, arg: int | str | None) -> int:
        if arg is None:
            # Past every id in use or with a data dir: a new node never reuses old data.
            used = [n.id for n in self.state.nodes]
            used += [int(p.name[4:]) for p in (self.state.dir / "data").glob("node*")
                     if p.name[4:].isdigit()]
            return max(used, default=0) + 1
        if type(arg) is str and arg.strip().isdigit():
            arg = int(arg)
        if type(arg) is not int or arg < 1:
            raise CommandError(ReplyCode.BAD_REQUEST, f"add-node: {arg!r:.40} is not a node id")
        if arg in self.procs:
            raise CommandError(ReplyCode.BAD_REQUEST, f"add-node: node {arg} already exists")
        return arg

    def new_node_address(self, node_id: int) -> str:
        """The controller's port + id, as `up` numbers them, if free; else any free port."""
        host, _, port = self.state.controller.address.removeprefix("tcp://").rpartition(":")
        taken = set(self.state.addresses.values())
        candidate = f"tcp://{host}:{int(port) + node_id}"
        if int(port) + node_id < 65536 and candidate not in taken and not port_in_use(candidate):
            return candidate
        return f"tcp://{host}:{free_ports(1)[0]}"

    def save_members(self) -> None:
        """Write cluster.json after a membership change (every node's command line names
        every member as a peer, so a restarted node knows them all), publish the sample
        and tell the router the members."""
        self.maybe_reload_state()  # keep pids that `raftkv up` recorded meanwhile
        addresses = self.state.addresses
        for n in self.state.nodes:
            n.argv = cluster_state.with_peers(n.argv, n.id, addresses)
        self.state.save()
        self.state_mtime = self.read_state_mtime()
        self.tick(time.monotonic())
        self.pair.send_pyobj(Members(dict(addresses)))


COMMANDS: dict[str, CommandHandler] = {
    "kill-leader": Supervisor.command_kill_leader,
    "kill": Supervisor.command_kill,
    "restart": Supervisor.command_restart,
    "pause": Supervisor.command_pause,
    "resume": Supervisor.command_resume,
    "partition": Supervisor.command_partition,
    "heal": Supervisor.command_heal,
    "transfer-leader": Supervisor.command_transfer_leader,
    "add-node": Supervisor.command_add_node,
    "promote": Supervisor.command_promote,
    "remove-node": Supervisor.command_remove_node,
}


def wait_listening(child: Any, port: int, timeout: float) -> bool:
    """Whether process `child` (a Popen) listens on TCP `port` within `timeout` seconds;
    False as soon as it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        try:
            conns = psutil.Process(child.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
            return True
        time.sleep(0.02)
    return False


def process_health(p: psutil.Process | None) -> dict[str, Any]:
    """psutil's view of a worker: all None when it does not run."""
    health: dict[str, Any] = {"paused": False, "rss_bytes": None, "open_files": None,
                              "uptime_s": None}
    if p is None:
        return health
    try:
        with p.oneshot():
            health["paused"] = p.status() == psutil.STATUS_STOPPED
            health["rss_bytes"] = p.memory_info().rss
            health["open_files"] = len(p.open_files())
            health["uptime_s"] = round(time.time() - p.create_time(), 3)
    except psutil.Error:
        pass
    return health
