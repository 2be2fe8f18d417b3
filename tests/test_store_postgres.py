"""What only the PostgreSQL store has: a URL (and its faults), the single-writer lock across
processes, schema migrations in a shared database, and the indexer driving it end to end.
(Everything both backends share is in test_store.py and test_delta.py, run against both.)"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from hashsvc_client import Client

from hashsvc import config
from hashsvc.errors import HashsvcError
from hashsvc.home import DataHome
from hashsvc.snapshot import load_current, publish
from hashsvc.store import EntrySelector, NewEntry, SqliteStore, open_store, redact
from hashsvc.store.postgres import PostgresStore
from hashsvc.store.postgres_schema import SCHEMA_VERSION
from tests.conftest import run_indexer
from tests.postgres_server import PostgresServer
from tests.server_process import ServerProcess


def test_redact_hides_passwords_only() -> None:
    assert redact("postgresql://hma:s3cr%40t@db:5432/hashsvc") == "postgresql://hma:***@db:5432/hashsvc"
    assert redact("postgresql://db/x?sslmode=require&password=pw") == (
        "postgresql://db/x?sslmode=require&password=***")
    assert redact("postgresql://hma@db/x") == "postgresql://hma@db/x"
    assert redact(Path("/data/store.sqlite")) == "/data/store.sqlite"


@pytest.mark.parametrize("url", [
    "postgresql://someone:hunter2@127.0.0.1:1/hashsvc",  # nothing listens on port 1
    "postgresql://someone:hunter2@127.0.0.1:1/hashsvc?sslmode=bogus",  # a malformed option
])
def test_an_unreachable_or_wrong_url_is_one_line_naming_it_without_the_password(
    home: DataHome, url: str
) -> None:
    result = run_indexer(home, "--store", url, "bank", "list")
    assert result.returncode == 6  # UNAVAILABLE
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "postgresql://someone:***@127.0.0.1:1/hashsvc" in lines[0], lines


def test_a_sqlite_path_is_not_taken_for_a_store_url(home: DataHome) -> None:
    result = run_indexer(home, "--store", "/tmp/elsewhere.sqlite", "bank", "list")
    assert result.returncode == 3 and "must be a postgresql:// URL" in result.stderr
    with pytest.raises(HashsvcError, match="store must be a postgresql:// URL"):
        config.load(argparse.Namespace(config=None, store="/tmp/elsewhere.sqlite"), environ={})
    loaded = config.load(argparse.Namespace(config=None),
                         environ={"HASHSVC_STORE": "postgresql://u:pw@db/x"})
    assert loaded.store == "postgresql://u:pw@db/x"
    assert loaded.describe()["store"] == "postgresql://u:***@db/x"


def test_a_second_publisher_fails_at_once_naming_the_holder(
    postgres: PostgresServer, home: DataHome
) -> None:
    url = postgres.new_database()
    with open_store(url) as store:
        store.create_bank("a")
        with store.writer_lock("publish"):
            rival = run_indexer(home, "--store", url, "publish")
            assert rival.returncode == 6  # FAILED_PRECONDITION
            assert "holds the publish lock" in rival.stderr
            assert f"pid {os.getpid()}" in rival.stderr  # our application_name names us
            assert "Traceback" not in rival.stderr
            with pytest.raises(HashsvcError, match="holds the publish lock"):
                publish(store, home.snapshots_dir)
        assert publish(store, home.snapshots_dir).published  # free again once released
        # With a wait, a second publisher takes its turn once the first lets go.
        published: list[bool] = []
        with store.writer_lock("publish"):
            waiter = threading.Thread(target=lambda: published.append(publish(
                store, home.snapshots_dir, force=True, lock_wait=600).published))
            waiter.start()
            waiter.join(timeout=0.5)
            assert waiter.is_alive() and not published  # still waiting while the lock is held
        waiter.join(timeout=600)
        assert published == [True]


def test_migrations_record_the_version_and_refuse_a_newer_database(
    postgres: PostgresServer,
) -> None:
    url = postgres.new_database()
    open_store(url).close()
    open_store(url).close()  # a second opening finds nothing to do
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
            str(SCHEMA_VERSION),)
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema'")
    with pytest.raises(HashsvcError, match=r"store schema 999 is newer"):
        open_store(url)


def test_schema_2_moves_the_hash_to_the_front_of_the_unique_index_and_keeps_the_entries(
    postgres: PostgresServer,
) -> None:
    """A database at schema 1 (as the first release made it) is upgraded in place: same rows,
    the unique index now leads with the hash, and duplicates are still refused."""
    from hashsvc.store.postgres_schema import MIGRATIONS

    url = postgres.new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute(MIGRATIONS[0].encode())
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema', '1')")
        conn.execute("INSERT INTO banks (name, kind, created_at, updated_at)"
                     " VALUES ('a', 'match', 0, 0)")
        conn.execute("INSERT INTO entries (bank_id, algorithm, hash, external_id, added_at)"
                     " SELECT id, 'md5', %s, 'x', 0 FROM banks", (bytes(16),))
    with open_store(url) as store:
        again = store.add_entries("a", [NewEntry("md5", bytes(16), "y")])
        assert (again.added, again.duplicates) == (0, 1)
    with psycopg.connect(url, autocommit=True) as conn:
        definition = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'entries_unique'").fetchone()
        assert definition is not None and "(hash, bank_id, algorithm)" in str(definition[0])
        assert conn.execute("SELECT count(*) FROM entries").fetchone() == (1,)


def test_the_indexer_runs_on_postgres_import_to_snapshot(
    postgres: PostgresServer, home: DataHome, tmp_path: Path
) -> None:
    """--store is a global option: create, import (COPY), a bad line rolls back the whole file,
    publish; the snapshot is built from PostgreSQL."""
    url = postgres.new_database()
    run_indexer(home, "--store", url, "bank", "create", "known", check=True)
    good = tmp_path / "good.csv"
    good.write_text("hash,algorithm,external_id\n"
                    + "".join(f"{n:064x},pdq,case-{n}\n" for n in range(1, 301))
                    + f"{1:064x},pdq,again\n")
    imported = run_indexer(home, "--store", url, "import", "known", str(good), check=True)
    assert "added 300, duplicates 1" in imported.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("hash,algorithm,external_id\n" f"{999:064x},pdq,fine\nnot-hex,pdq,broken\n")
    refused = run_indexer(home, "--store", url, "import", "known", str(bad))
    assert refused.returncode == 3 and f"{bad}:3" in refused.stderr
    run_indexer(home, "--store", url, "publish", check=True)
    assert not (home.store_path).exists()  # the home holds snapshots only
    assert load_current(home.snapshots_dir).entry_count == 300
    with open_store(url) as store:
        assert store.stats().entries == 300
        store.add_entries("known", [NewEntry("pdq", bytes(32), "zero")])
        assert store.stats().entries == 301


def test_serve_with_an_unreachable_store_exits_in_one_line_without_the_password(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hashsvc", "serve", "--home", str(tmp_path / "home"),
         "--http-listen", "off",
         "--listen", "127.0.0.1:0", "--metrics-listen", "", "--workers", "1",
         "--store", "postgresql://someone:hunter2@127.0.0.1:1/hashsvc"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
    assert "hunter2" not in result.stderr + result.stdout and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "hashsvc: error: cannot open PostgreSQL store postgresql://someone:***@127.0.0.1:1/")


def test_store_copy_moves_a_sqlite_home_verbatim(
    postgres: PostgresServer, home: DataHome
) -> None:
    """Ids, disabled and removed entries and the revision come across, so a snapshot published
    from SQLite stays valid against PostgreSQL: the same change feed from its revision."""
    with SqliteStore(home.create().store_path) as source:
        source.create_bank("a", tags=["t"], thresholds={"pdq": 20})
        source.create_bank("staged", enabled=False)
        source.add_entries("a", [NewEntry("pdq", _code(n), f"x{n}", {"n": n}) for n in range(50)])
        source.add_entries("staged", [NewEntry("md5", bytes(16), "m")])
        snapshot_revision = publish(source, home.snapshots_dir).manifest["store_revision"]
        source.set_disabled("a", EntrySelector(external_ids=["x1"]), True, "fp")
        source.remove_entries("a", EntrySelector(external_ids=["x2"]))
        expected = (source.stats(), source.list_banks(), source.changes_since(snapshot_revision),
                    source.find_entries("a", EntrySelector(ids=list(range(1, 60)))))
    url = postgres.new_database()
    copied = run_indexer(home, "store", "copy", "--to", url, check=True)
    assert "copied 2 banks and 50 entries" in copied.stderr
    with open_store(url) as target:
        assert (target.stats(), target.list_banks(), target.changes_since(snapshot_revision),
                target.find_entries("a", EntrySelector(ids=list(range(1, 60))))) == expected
        target.add_entries("a", [NewEntry("pdq", _code(999), "new")])
        (new,) = target.find_entries("a", EntrySelector(external_ids=["new"]))
        assert new.id == 52  # after every copied id, not over one
    again = run_indexer(home, "store", "copy", "--to", url)
    assert again.returncode == 5 and "already holds banks" in again.stderr


def _code(n: int) -> bytes:
    return n.to_bytes(32, "big")


def test_serve_on_postgres_sees_changes_made_by_another_process(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """`hashsvc serve --store URL`: the admin API writes to PostgreSQL and publishes under the
    advisory lock; an `indexer` in another process disables an entry, and the server's change
    feed (its delta) drops it without a publish."""
    # Trust authentication ignores the password: it is there to show it never reaches the log.
    user = postgres.user
    url = postgres.new_database().replace(f"://{user}@", f"://{user}:hunter2@")
    home = tmp_path / "home"
    home.mkdir()
    value = _code(77)
    with ServerProcess(home, "--store", url) as server, \
            Client(server.target, api_key=server.keys["admin"]) as admin:
        admin.create_bank("known")
        admin.add_entries("known", [(("pdq", value), "k77", None)])
        assert [m.external_id for m in admin.scan_hashes([("pdq", value)]).matches] == ["k77"]
        admin.publish()
        assert not (home / "store.sqlite").exists()
        run_indexer(DataHome(home), "--store", url, "disable", "known",
                    "--external-id", "k77", check=True)
        for _ in range(600):  # hang guard; each pass is a real scan
            if not admin.scan_hashes([("pdq", value)]).matches:
                break
            time.sleep(0.1)
        assert not admin.scan_hashes([("pdq", value)]).matches
        assert f"postgresql://{user}:***@" in server.log and "hunter2" not in server.log


def test_a_postgres_restart_costs_the_calls_made_meanwhile_not_written_data(
    postgres: PostgresServer,
) -> None:
    """While the server is down a write fails in one line (no password); nothing committed is
    lost, and once it is back the same store object works again (stale pooled connections are
    replaced), with the revision where it was."""
    url = postgres.new_database().replace(f"://{postgres.user}@",
                                          f"://{postgres.user}:hunter2@")
    with PostgresStore(url, pool_wait=1.0) as store:  # a call waits 1 s for a connection
        store.create_bank("a")
        store.add_entries("a", [NewEntry("pdq", _code(n)) for n in range(10)])
        revision = store.revision()
        postgres.stop()
        try:
            with pytest.raises(HashsvcError) as refused:
                store.add_entries("a", [NewEntry("pdq", _code(99))])
            assert "hunter2" not in refused.value.message
            assert f"{postgres.user}:***@" in refused.value.message, refused.value.message
        finally:
            postgres.start()
        assert store.revision() == revision and store.stats().entries == 10
        assert store.add_entries("a", [NewEntry("pdq", _code(99))]).added == 1


def _terminate_listeners(url: str) -> int:
    """Kill every LISTENing backend of the database, as a network fault or a restart would."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%%'").fetchall()
    return len(rows)


def test_a_write_in_one_store_wakes_a_waiter_on_another(postgres: PostgresServer) -> None:
    """Every committed write NOTIFYs: a watcher on another connection wakes at once, rather
    than at its next reload interval. Only a notification returns True (a timeout is False),
    so the 600 s is a hang guard, not a time the test depends on."""
    url = postgres.new_database()
    with PostgresStore(url) as writer, PostgresStore(url) as watcher:
        assert watcher.wait_for_change(0) is False  # now LISTENing; nothing has happened
        writer.create_bank("a")
        assert watcher.wait_for_change(600) is True
        assert watcher.revision() == writer.revision()
        writer.add_entries("a", [NewEntry("pdq", _code(n), f"e{n}") for n in range(3)])
        writer.set_disabled("a", EntrySelector(external_ids=("e1",)), True)
        assert watcher.wait_for_change(600) is True  # two commits, one wake-up or two
        assert watcher.revision() == writer.revision()


def test_a_rolled_back_write_notifies_no_one(postgres: PostgresServer) -> None:
    """Notifications arrive in commit order, each naming its revision: a failed write between
    two that commit would show as a payload repeated (its revision is reused), so reading up to
    the last one's payload decides it, with no wait for a notification that might come."""
    url = postgres.new_database()
    with PostgresStore(url) as writer, psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN hashsvc_changes")
        writer.create_bank("a")
        revision = writer.revision()
        with pytest.raises(HashsvcError):
            writer.create_bank("a")
        writer.create_bank("b")
        writer.create_bank("c")
        payloads: list[str] = []
        for notification in listener.notifies(timeout=600):  # a hang guard
            payloads.append(notification.payload)
            if notification.payload == str(revision + 2):
                break
        assert payloads == [str(revision), str(revision + 1), str(revision + 2)]


def test_a_missed_notification_costs_latency_not_the_change(postgres: PostgresServer) -> None:
    """The listening connection killed: the change it missed is still in the log (the revision
    read finds it), a wait after the fault reports no wake-up instead of raising, and the next
    wait listens again, so later changes wake it as before."""
    url = postgres.new_database()
    with PostgresStore(url) as writer, PostgresStore(url) as watcher:
        writer.create_bank("a")
        watcher.wait_for_change(0)
        before = watcher.revision()
        assert _terminate_listeners(url) == 1
        assert writer.add_entries("a", [NewEntry("pdq", _code(5), "missed")]).added == 1
        assert watcher.wait_for_change(0.1) is False  # the fault is absorbed, not raised
        assert watcher.revision() == before + 1  # the backstop: the change is in the log
        missed = watcher.find_entries("a", EntrySelector(external_ids=("missed",)))
        assert watcher.changes_since(before).changed == {e.id for e in missed}
        watcher.wait_for_change(0)  # listening again
        writer.create_bank("heard")
        assert watcher.wait_for_change(600) is True


def test_a_server_whose_listener_dies_still_applies_changes(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """`hashsvc serve` on PostgreSQL with its LISTEN connection killed under it: a disable made
    by another process still reaches its scans, through the revision read every interval."""
    url = postgres.new_database()
    home = tmp_path / "home"
    home.mkdir()
    value = _code(78)
    with ServerProcess(home, "--store", url) as server, \
            Client(server.target, api_key=server.keys["admin"]) as admin:
        admin.create_bank("known")
        admin.add_entries("known", [(("pdq", value), "k78", None)])
        admin.publish()
        for _ in range(600):  # hang guard: until the watcher is LISTENing, then kill it
            if _terminate_listeners(url):
                break
            time.sleep(0.1)
        with PostgresStore(url) as other:
            assert other.set_disabled("known", EntrySelector(external_ids=("k78",)), True) == 1
        for _ in range(600):  # hang guard; each pass is a real scan
            if not admin.scan_hashes([("pdq", value)]).matches:
                break
            time.sleep(0.1)
        assert not admin.scan_hashes([("pdq", value)]).matches
