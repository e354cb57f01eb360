"""`raftkv status`: the table, and what it says about a node that repairs its log."""

from click.testing import CliRunner

from harness.cli import print_status_table


def node(i: int, **extra: object) -> dict:
    return {"id": i, "address": f"tcp://127.0.0.1:770{i}", "alive": True, "role": "follower",
            "term": 3, **extra}


def render(st: dict) -> str:
    import click

    @click.command()
    def show() -> None:
        print_status_table(st)

    return CliRunner().invoke(show).output


def test_a_repairing_node_is_named_with_what_was_cut():
    out = render({"leader": 1, "term": 3, "nodes": [
        node(1), node(2, repair="wal-0000000001.log at offset 4096: CRC mismatch")]})
    assert "node 2 is REPAIRING its log" in out and "offset 4096" in out
    assert "node 1 is REPAIRING" not in out


def test_no_repair_line_for_healthy_nodes():
    out = render({"leader": 1, "term": 3, "nodes": [node(1), node(2, repair=None)]})
    assert "REPAIRING" not in out and "tcp://127.0.0.1:7702" in out
