"""Immutable, versioned snapshots of the store: the artifact every scanner loads.

Layout of `snapshots/<version>/`:

    manifest.json                 version, created_at, store revision, counts, sha256 of each file
    banks.json                    the enabled banks: name, kind, tags, thresholds
    entries.ids.npy               entry id of each entry row (int64)
    entries.banks.npy             bank index of each entry row (int32)
    entries.external_ids.{bin,offsets.npy}, entries.metadata.{bin,offsets.npy}
    pdq.mih.{codes,layout,ids,offsets}.npy
                                  PDQ: a multi-index-hashing table of the distinct hashes
                                  (exact radius search; see mih.py)
    <algorithm>.faiss             pHash/dHash: a FAISS binary index of the distinct hashes
    <algorithm>.codes.npy         exact kinds: the distinct hashes, sorted, for binary search
    <algorithm>.postings.{offsets,rows}.npy
                                  distinct hash i -> entry rows rows[offsets[i]:offsets[i+1]]

A layered version (format 3, layering.py) holds its base's files above, unchanged (the same
sha256: hard links here, the same objects in a bucket), plus the changes since that base:

    layer.tombstones.npy          ids of every entry changed since the base (int64, sorted)
    layer.ids.npy, layer.banks.npy, layer.variants.npy
                                  the changed entries active now, grouped by algorithm
    layer.external_ids.{bin,offsets}.npy, layer.metadata.{bin,offsets}.npy
    layer.<algorithm>.codes.npy   their hashes, (n, bytes) uint8, in row order

and its manifest's `layer` says the base's revision and counts.

Distinct hashes are indexed once, however many banks list them; the postings map a FAISS id back to
every entry. Everything is written to a temporary directory, fsync'd and renamed, and only then is
`snapshots/current` (a one-line file naming the version) replaced by an atomic rename, so a reader
never sees half a snapshot and a crash at any point leaves the previous one in force. Loading
checks the manifest's shape, every file's sha256, and every array's dtype and length against the
manifest and the other arrays, and refuses a snapshot that does not match. A snapshot is identified
by its directory's name, the one `current` holds.

The package splits by job: `model` (what a loaded snapshot is), `publishing` (building and
switching `current`), `layering` (a small change as a layer on the current base), `manifest`
(its schema), `loading` (finding, verifying and loading).
Import from here.
"""

from hashsvc.snapshot.loading import (
    current_version,
    list_versions,
    load,
    load_current,
    version_dir,
)
from hashsvc.snapshot.manifest import read_manifest
from hashsvc.snapshot.model import (
    CURRENT,
    FORMAT_VERSION,
    MANIFEST,
    READABLE_FORMATS,
    BankInfo,
    HashTable,
    PublishResult,
    Snapshot,
    StringTable,
)
from hashsvc.snapshot.publishing import publish

__all__ = [
    "CURRENT", "FORMAT_VERSION", "MANIFEST", "READABLE_FORMATS", "BankInfo", "HashTable",
    "PublishResult", "Snapshot", "StringTable", "current_version", "list_versions", "load",
    "load_current", "publish", "read_manifest", "version_dir",
]
