"""Provenance in matches (Match.provenance): carried by the change feed, full and layered
snapshots and the live delta, so scan replicas report it without reading the store per match;
snapshots without it (older, or of a store without exchanges) load as before."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from hashsvc.home import DataHome
from hashsvc.matching.delta import Delta
from hashsvc.snapshot import load_current, publish
from hashsvc.store import NewEntry, Store
from hashsvc.store.exchange_model import ExchangePage, UpstreamEntry
from tests.conftest import BRIDGE_ORIGINAL, IMAGES, run_indexer, scan_until
from tests.postgres_server import PostgresServer
from tests.scale_out import running_cluster
from tests.server_process import ServerProcess


def _page(values: dict[str, tuple[str, ...]], checkpoint: str) -> ExchangePage:
    return ExchangePage(upserts=[UpstreamEntry(f"up-{name}", "md5", hashlib.md5(
        name.encode()).digest(), tags) for name, tags in values.items()],
        checkpoint=checkpoint, more=False)


def test_the_change_feed_and_snapshots_carry_provenance(any_store: Store, home: DataHome
                                                        ) -> None:
    any_store.create_bank("feed")
    any_store.create_bank("manual")
    any_store.bind_exchange("feed", "tat", {})
    any_store.apply_exchange_page("feed", _page({"a": ("terror",), "b": ()}, "1"), None)
    any_store.add_entries("manual", [NewEntry("md5", bytes(16), "by-hand")])

    changes = any_store.changes_since(0)
    ids = {row[4]: row[0] for row in changes.active}  # external id -> entry id
    assert set(changes.provenance) == {ids["up-a"], ids["up-b"]}  # none for the manual entry
    delta = Delta.build(changes, any_store.list_banks())
    [origin] = next(e for e in delta.tables["md5"].entries if e.external_id == "up-a").provenance
    assert (origin.exchange, origin.upstream_id, origin.tags) == ("tat", "up-a", ("terror",))

    publish(any_store, home.snapshots_dir)
    snapshot = load_current(home.snapshots_dir)
    rows = {snapshot.external_ids.get(r): r for r in range(len(snapshot.entry_ids))}
    [origin] = snapshot.entry_provenance(rows["up-a"])
    assert (origin.exchange, origin.upstream_id, origin.tags) == ("tat", "up-a", ("terror",))
    assert origin.entry_id == ids["up-a"] and 0 < origin.first_seen <= origin.last_seen
    assert snapshot.entry_provenance(rows["by-hand"]) == ()

    # a small change is a layer: its provenance is the layer's
    any_store.apply_exchange_page("feed", _page({"c": ("new",)}, "2"), "1")
    layered = publish(any_store, home.snapshots_dir)
    assert "layer" in layered.manifest and "layer.provenance.bin.npy" in layered.manifest["files"]
    layer = load_current(home.snapshots_dir).layer
    assert layer is not None
    [text] = layer.provenance_by_id().values()
    assert json.loads(text)[0][:3] == ["tat", "up-c", ["new"]]


def test_an_entry_an_exchange_lists_later_reaches_the_delta_with_it(any_store: Store) -> None:
    """An entry imported by hand and then listed upstream, or listed under two upstream ids of
    which one goes, keeps its hash: its provenance still changes, and the delta must see it."""
    any_store.create_bank("feed")
    any_store.add_entries("feed", [NewEntry("md5", hashlib.md5(b"a").digest(), "by-hand")])
    any_store.bind_exchange("feed", "tat", {})
    before = any_store.revision()
    assert not any_store.changes_since(before).changed
    any_store.apply_exchange_page("feed", _page({"a": ("one",)}, "1"), None)
    changes = any_store.changes_since(before)
    [(entry_id, text)] = changes.provenance.items()
    assert [row[0] for row in changes.active] == [entry_id]
    assert json.loads(text)[0][:3] == ["tat", "up-a", ["one"]]

    # a second upstream id for the same hash, then the first one deleted upstream
    twin = ExchangePage([UpstreamEntry("twin", "md5", hashlib.md5(b"a").digest())], "2", False)
    any_store.apply_exchange_page("feed", twin, "1")
    before = any_store.revision()
    gone = ExchangePage((), "3", False, deletions=["up-a"])
    assert any_store.apply_exchange_page("feed", gone, "2").deleted == 0  # the entry stays
    [text] = any_store.changes_since(before).provenance.values()
    assert [item[1] for item in json.loads(text)] == ["twin"]


def test_snapshots_without_provenance_load_as_before(store: Store, home: DataHome) -> None:
    store.create_bank("manual")
    store.add_entries("manual", [NewEntry("md5", bytes(16), "by-hand")])
    result = publish(store, home.snapshots_dir)
    assert not any("provenance" in name for name in result.manifest["files"])  # as before
    snapshot = load_current(home.snapshots_dir)
    assert snapshot.provenance is None and snapshot.entry_provenance(0) == ()

    # a snapshot written before provenance was carried: the same files, less the column
    store.create_bank("feed")
    store.bind_exchange("feed", "tat", {})
    store.apply_exchange_page("feed", _page({"a": ("x",)}, "1"), None)
    full = publish(store, home.snapshots_dir, force=True)
    directory = home.snapshots_dir / full.version
    manifest = json.loads((directory / "manifest.json").read_text())
    for name in ("entries.provenance.bin.npy", "entries.provenance.offsets.npy"):
        del manifest["files"][name]
        (directory / name).unlink()
    (directory / "manifest.json").write_text(json.dumps(manifest))
    older = load_current(home.snapshots_dir)
    assert older.provenance is None and older.entry_count == 2


def test_matches_report_provenance_from_snapshot_delta_and_layer(
    home: DataHome, tmp_path: Path
) -> None:
    from hashsvc_client import Client

    pen, bridge = (IMAGES / "pen-and-coaster.png").read_bytes(), BRIDGE_ORIGINAL.read_bytes()
    later = (IMAGES / "misc" / "c.png").read_bytes()
    digests = {name: hashlib.md5(image).hexdigest()
               for name, image in (("pen", pen), ("bridge", bridge), ("later", later))}
    listing = tmp_path / "list.txt"
    listing.write_text(f"{digests['pen']}\n{digests['bridge']}\n")
    run_indexer(home, "bank", "create", "feed", check=True)
    run_indexer(home, "bank", "create", "manual", check=True)
    run_indexer(home, "exchange", "bind", "feed", "--type", "file", "--source", str(listing),
                "--algorithm", "md5", check=True)
    run_indexer(home, "exchange", "sync", "feed", check=True)
    run_indexer(home, "publish", check=True)
    with ServerProcess(home.root) as server, \
            Client(server.target, api_key=server.keys["scanner"]) as client:
        def origin_of(match: object, digest: str) -> None:
            [origin] = match.provenance  # type: ignore[attr-defined]
            assert (origin.exchange, origin.upstream_id) == ("file", f"md5:{digest}")
            assert 0 < origin.first_seen <= origin.last_seen and not origin.tags

        # from the snapshot: ScanImage, ScanHashes and ScanImages
        [match] = client.scan_image(pen).matches
        origin_of(match, digests["pen"])
        [match] = client.scan_hashes([("md5", digests["bridge"])]).matches
        origin_of(match, digests["bridge"])
        [response] = client.scan_images([("one", pen)])
        origin_of(response.result.matches[0], digests["pen"])

        # added upstream later: live through the delta, then in a layered version
        listing.write_text(f"{digests['pen']}\n{digests['bridge']}\n{digests['later']}\n")
        run_indexer(home, "exchange", "sync", "feed", check=True)
        origin_of(scan_until(client, later, matched=True).matches[0], digests["later"])
        published = json.loads(run_indexer(home, "publish", check=True).stdout)
        with_layer = load_current(home.snapshots_dir)
        assert with_layer.layer is not None and with_layer.version == published["version"]
        for _ in range(1200):  # scans, until the server serves the layered version
            result = client.scan_image(later)
            if result.snapshot_version == with_layer.version:
                break
            time.sleep(0.05)
        assert result.snapshot_version == with_layer.version
        origin_of(result.matches[0], digests["later"])


def test_a_scan_replica_reports_the_provenance_of_a_scheduled_sync(
    postgres: PostgresServer, s3_endpoint: str, tmp_path: Path
) -> None:
    """Both halves together, as deployed: the admin service syncs a bound bank on its own
    schedule into PostgreSQL; a scan replica (which never reads the provenance table) reports
    the provenance from its delta, then from the published snapshot in the bucket."""
    from hashsvc_client import Client

    digest = hashlib.md5(b"known").hexdigest()
    listing = tmp_path / "list.csv"
    listing.write_text(f"algorithm,hash,external_id\nmd5,{digest},known-1\n")
    with running_cluster(postgres.new_database(), s3_endpoint, tmp_path / "cluster",
                         replicas=1) as cluster:
        indexer = DataHome(tmp_path / "indexer-home")
        run_indexer(indexer, "--store", cluster.store, "bank", "create", "feed", check=True)
        run_indexer(indexer, "--store", cluster.store, "exchange", "bind", "feed", "--type",
                    "file", "--source", str(listing), "--every", "1s", check=True)
        [replica] = cluster.replicas
        with Client(replica.target, api_key=cluster.scan_key) as client:
            def provenance() -> list[tuple[str, str]]:
                result = client.scan_hashes([("md5", digest)])
                return [(p.exchange, p.upstream_id) for m in result.matches
                        for p in m.provenance]

            expected = [("file", f"md5:{digest}")]
            for _ in range(1200):  # scans 0.1 s apart: a hang guard
                if provenance() == expected:
                    break
                time.sleep(0.1)
            assert provenance() == expected  # from the delta
            published = run_indexer(indexer, "--store", cluster.store, "publish", "--snapshots",
                                    cluster.snapshots, "--s3-endpoint-url", cluster.endpoint,
                                    check=True)
            version = json.loads(published.stdout)["version"]
            for _ in range(1200):
                if client.scan_hashes([("md5", digest)]).snapshot_version == version:
                    break
                time.sleep(0.1)
            result = client.scan_hashes([("md5", digest)])
            assert result.snapshot_version == version
            assert [(p.exchange, p.upstream_id) for p in result.matches[0].provenance] == expected
    assert any(r.get("event") == "exchange_sync" and r.get("added") == 1 for r in map(
        json.loads, (cluster.admin.home / "audit.jsonl").read_text().splitlines()))
