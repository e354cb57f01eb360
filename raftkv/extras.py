"""Whether the `server` extra is installed, for the command lines that need it.

A client-only install (`pip install raftkv`, no `server` extra) still has the `raftkv`
script, since console scripts cannot depend on an extra; there the command lines
(`raftkv`, `python -m raftkv`) print one line naming what is missing and exit with
EXIT_NOT_INSTALLED, instead of an ImportError's traceback."""

from __future__ import annotations

import importlib.util
import sys

EXIT_NOT_INSTALLED = 8  # the README's exit codes: the server extra is not installed

# The modules of the `server` extra's packages (setup.cfg); tests/unit/test_packaging.py
# keeps the two lists equal. The CLI loads some only for some verbs (aiohttp for
# `dashboard`), so all are checked before any verb runs, not at the first import.
SERVER_MODULES = ("aiohttp", "click", "lmdb", "prometheus_client", "psutil",
                  "sortedcontainers")


def missing_server_modules() -> list[str]:
    """The SERVER_MODULES that cannot be imported (found without importing them)."""
    missing = []
    for name in SERVER_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # already imported, without a spec: present
            found = True
        except ImportError:  # a finder refused it
            found = False
        if not found:
            missing.append(name)
    return missing


def require_server_extra() -> None:
    """Exit EXIT_NOT_INSTALLED, saying what to install, unless the extra is there."""
    missing = missing_server_modules()
    if missing:
        print(f"raftkv: the command line needs the server extra, and {', '.join(missing)} "
              f"{'is' if len(missing) == 1 else 'are'} not installed: "
              "pip install 'raftkv[server]' (in a checkout: make install)", file=sys.stderr)
        sys.exit(EXIT_NOT_INSTALLED)
