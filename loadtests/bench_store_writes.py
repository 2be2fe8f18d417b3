"""What exactly-once costs a PostgreSQL write: one small write with its operation key, against
the same write without it (the transaction every write was before the key: revision bump,
NOTIFY, the statement), on the same store, interleaved.

    python loadtests/bench_store_writes.py --writes 300 --rounds 5
    python loadtests/bench_store_writes.py --smoke               # CI: seconds

Starts a throwaway PostgreSQL server (Debian's binaries, as the tests do). The write toggles one
entry's disabled flag, as `SetEntriesDisabled` does. Prints one JSON object: the median
milliseconds per write of each, their ratio, and the load averages (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hashsvc.store import EntrySelector, NewEntry
from hashsvc.store.postgres import PostgresStore

_TOGGLE = "UPDATE entries SET disabled = NOT disabled, changed_rev = %s WHERE id = %s"


def _bare(store: PostgresStore, entry_id: int) -> None:
    with store._write() as (conn, revision):
        conn.execute(_TOGGLE, (revision, entry_id))


def _keyed(store: PostgresStore, entry_id: int) -> None:
    def toggle(conn: Any, revision: int) -> int:
        return int(conn.execute(_TOGGLE, (revision, entry_id)).rowcount)

    store._transact(toggle)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=300, help="writes per contender a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="20 writes, 1 round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.writes, args.rounds = 20, 1
    from tests.postgres_server import find_binaries, running_postgres

    bin_dir = find_binaries()
    if bin_dir is None:
        raise SystemExit("no /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    per_write: dict[str, list[float]] = {"without key": [], "with key": []}
    with running_postgres(bin_dir) as server, PostgresStore(server.new_database()) as store:
        store.create_bank("bench")
        store.add_entries("bench", [NewEntry("pdq", bytes([7]) * 32, "e")])
        entry_id = store.find_entries("bench", EntrySelector(external_ids=("e",)))[0].id
        first = store.revision()
        for _ in range(args.rounds):  # interleaved: a noisy machine slows both alike
            for name, write in (("without key", _bare), ("with key", _keyed)):
                started = time.perf_counter()
                for _ in range(args.writes):
                    write(store, entry_id)
                per_write[name].append((time.perf_counter() - started) / args.writes * 1000)
        committed = store.revision() - first  # every write of both contenders landed, once
        assert committed == 2 * args.rounds * args.writes, committed
    medians = {name: round(statistics.median(values), 3) for name, values in per_write.items()}
    report = {"ms_per_write": medians,
              "ratio_with_to_without": round(medians["with key"] / medians["without key"], 2),
              "writes": args.writes, "rounds": args.rounds, "committed": committed,
              "load_average": os.getloadavg()}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
