"""`python -m raftkv`: the store's own command line, raftkv/server.py (`node` runs one
node), once the `server` extra is known to be installed (raftkv/extras.py). The harness's
command line (`raftkv`, `bin/raftkv`: up, put, chaos, ...) is the layer above's:
harness/__main__.py."""

from __future__ import annotations

from raftkv.extras import require_server_extra


def main() -> None:
    require_server_extra()
    from raftkv.server import main as server

    server(prog_name="python -m raftkv")


if __name__ == "__main__":
    main()
