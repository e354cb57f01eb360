"""The `raftkv` console script, `bin/raftkv` and `python -m harness`: the command line of
harness/cli.py, once the `server` extra is known to be installed (raftkv/extras.py), so
that a client-only install gets one line saying what to install, not a traceback."""

from __future__ import annotations

from raftkv.extras import require_server_extra


def main() -> None:
    require_server_extra()
    from harness.cli import main as cli

    cli(prog_name="raftkv")


if __name__ == "__main__":
    main()
