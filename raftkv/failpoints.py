"""Failpoints: deliberate bugs that only tests switch on (after etcd's gofail).

They exist to prove that `raftkv chaos` has teeth: with one switched on, a short chaos
run must report a violation. Set RAFTKV_FAILPOINTS to a comma-separated list of names;
a node with any failpoint on says so loudly in its log. Never set it in production.
"""

from __future__ import annotations

import os

ENV = "RAFTKV_FAILPOINTS"

KNOWN = {
    "read-local": "every node answers GET from its own applied state at once, without "
                  "ReadIndex, leader or not (stale reads)",
    "ack-before-commit": "the leader acknowledges a put as soon as its own disk has it, "
                         "before a majority does (lost writes when it dies)",
    "lease-half-ttl": "the leader times every lease at half its TTL (revoked early)",
}


def enabled(environ: dict[str, str] | None = None) -> frozenset[str]:
    """The failpoints named in the environment. Unknown names are an error, so a typo in
    a test cannot silently test nothing."""
    raw = (environ if environ is not None else os.environ).get(ENV, "")
    names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    unknown = names - KNOWN.keys()
    if unknown:
        raise ValueError(f"{ENV}: unknown failpoint(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(KNOWN))}")
    return names
