"""Group-commit benchmark: `python -m raftkv.storage.bench [--seconds S]`.

For each batch size, appends batches of 100-byte entries with one sync per batch, fsync
on, in a fresh temp dir, for a bounded time. Entry construction is inside the timed loop,
as it is in a node.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from raftkv.raft.types import Entry, HardState
from raftkv.storage import Storage

ENTRY_BYTES = 100
BATCH_SIZES = (1, 16, 256)


def run(batch: int, seconds: float, fsync: bool = True) -> dict[str, float]:
    """Appends of `batch` entries, one sync each, for `seconds`: throughput and counts.
    fsyncs include the few of opening a fresh dir (FORMAT file, directory, first segment)."""
    payload = b"x" * ENTRY_BYTES
    with tempfile.TemporaryDirectory(prefix="raftkv-bench-") as d:
        st = Storage.open(d, fsync=fsync)
        st.append([], HardState(1, 1, 0))
        nxt = 1
        batches = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            st.append([Entry(1, i, data=payload) for i in range(nxt, nxt + batch)])
            st.sync()
            nxt += batch
            batches += 1
        elapsed = time.perf_counter() - start
        stats = st.stats()
        st.close()
    entries = nxt - 1
    return {
        "batch": batch,
        "batches_per_s": batches / elapsed,
        "entries_per_s": entries / elapsed,
        "mb_per_s": stats["bytes_written"] / elapsed / 1e6,
        "fsyncs": stats["fsyncs"],
        "batches": batches,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per batch size")
    args = ap.parse_args()
    print(f"{ENTRY_BYTES}-byte entries, fsync on, one sync per batch, {args.seconds:g} s each")
    print(
        f"{'batch':>6} {'appends/s':>10} {'entries/s':>11} {'MB/s':>7} {'batches':>8} {'fsyncs':>8}"
    )
    results = [run(b, args.seconds) for b in BATCH_SIZES]
    for r in results:
        print(
            f"{r['batch']:>6} {r['batches_per_s']:>10.0f} {r['entries_per_s']:>11.0f} "
            f"{r['mb_per_s']:>7.2f} {r['batches']:>8} {r['fsyncs']:>8}"
        )
    ratio = results[-1]["entries_per_s"] / results[0]["entries_per_s"]
    print(f"group commit: batch {BATCH_SIZES[-1]} sustains {ratio:.0f}x the entries/s of batch 1")


if __name__ == "__main__":
    main()
