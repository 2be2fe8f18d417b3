"""What HMA does with a bank's PDQ hashes, as the baseline for bench_snapshot.py.

    python loadtests/faiss_baseline.py build STORE.sqlite INDEX.faiss [flat|multihash]
    python loadtests/faiss_baseline.py load INDEX.faiss

`build` reads every enabled PDQ hash from a hashsvc store, builds a FAISS binary index of them
(`IndexBinaryFlat`, or `IndexBinaryMultiHash` with 16 tables of 16 bits, HMA's choice) and
writes it; `load` reads it back. Each prints one JSON object with its seconds and peak RSS.
No entry metadata, postings or checksums: a lower bound on what a real snapshot has to do.
"""

from __future__ import annotations

import json
import resource
import sqlite3
import sys
import time

import faiss
import numpy as np


def build(store: str, out: str, kind: str) -> dict[str, object]:
    started = time.perf_counter()
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT e.hash FROM entries e JOIN banks b ON b.id = e.bank_id"
                          " WHERE e.algorithm = 'pdq' AND e.disabled = 0 AND b.enabled = 1"
                          " ORDER BY e.id").fetchall()
    codes = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.uint8).reshape(-1, 32)
    index = (faiss.IndexBinaryFlat(256) if kind == "flat"
             else faiss.IndexBinaryMultiHash(256, 16, 16))
    index.add(codes)
    faiss.write_index_binary(index, out)
    return {"codes": len(codes), "seconds": time.perf_counter() - started}


def load(path: str) -> dict[str, object]:
    started = time.perf_counter()
    index = faiss.read_index_binary(path)
    return {"codes": index.ntotal, "seconds": time.perf_counter() - started}


def main(argv: list[str]) -> int:
    result = build(argv[1], argv[2], argv[3] if len(argv) > 3 else "flat") \
        if argv[0] == "build" else load(argv[1])
    result["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
