"""One set of input limits on every path into the store: `indexer import`, the other indexer
verbs and the gRPC AdminService, through the real CLI and the real server; and entries stored
before the limits still reported by the scans that match them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hashsvc_client import Client, InvalidArgument
from hashsvc_client.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from PIL import Image

from hashsvc.errors import HashsvcError
from hashsvc.home import DataHome
from hashsvc.limits import LIMITS, check_metadata
from hashsvc.snapshot import publish
from hashsvc.store import EntrySelector, NewEntry, SqliteStore
from tests.conftest import run_indexer
from tests.server_process import ServerProcess


def _pdq(n: int) -> str:
    """A PDQ hash ~128 bits from every other one: no two match each other."""
    return hashlib.sha256(f"pdq-{n}".encode()).hexdigest()


def _line(n: int, **fields: object) -> str:
    return json.dumps({"hash": _pdq(n), "algorithm": "pdq", **fields})


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


# Each line of the hostile list, the (1-based) line it is on, and words its rejection must hold.
HOSTILE = [
    (_line(1, external_id="fine", metadata={"case": 1}), None),
    (_line(2).replace("}", f', "metadata": {{"deep": {_nested(1_000)}}}}}'), "nested too deeply"),
    (_line(3).replace("}", f', "metadata": {{"n": {"9" * 4_301}}}}}'), "too many digits"),
    (_line(4).replace("}", ', "external_id": "\\udfff"}'), "not valid Unicode"),
    (_line(5).replace("}", f', "metadata": {{"n": {"1" * 401}}}}}'), "not exact as a float64"),
    (_line(6).replace("}", f', "metadata": {{"deep": {_nested(900)}}}}}'), "nested deeper"),
    (_line(7).replace("}", ', "metadata": {"text": "\\udfff"}}'), "not valid Unicode"),
    (_line(8, external_id="x" * (LIMITS.external_id_chars + 1)), "over the limit of 512"),
    (_line(9, metadata={"blob": "y" * LIMITS.metadata_bytes}), "over the limit of 16,384"),
    (_line(10).replace("}", ', "metadata": {"n": NaN}}'), "not finite"),
]


def _depth(levels: int) -> dict[str, object]:
    loaded: dict[str, object] = json.loads('{"a":' * (levels - 1) + '{"a":1}' + "}" * (levels - 1))
    return loaded


def test_metadata_limits_at_their_edges() -> None:
    assert check_metadata(_depth(LIMITS.metadata_depth)) == _depth(LIMITS.metadata_depth)
    assert check_metadata({"n": 2**53, "m": -(2**53), "f": 1e308, "b": True, "z": None}) == {
        "n": 2**53, "m": -(2**53), "f": 1e308, "b": True, "z": None}
    assert check_metadata({}) is None
    for bad, words in [
        (_depth(LIMITS.metadata_depth + 1), "nested deeper than 16"),
        ({"n": [2**53 + 1]}, "not exact as a float64"),
        ({"\udfff": 1}, "metadata key '\\udfff' is not valid Unicode"),
        ({1: 1}, "keys must be strings"),
        ({"s": {1, 2}}, "type set is not JSON"),
        ([1], "must be a JSON object"),
    ]:
        with pytest.raises(HashsvcError, match=re.escape(words)):
            check_metadata(bad)


@pytest.fixture
def hostile_list(tmp_path: Path) -> Path:
    path = tmp_path / "hostile.jsonl"
    path.write_text("".join(line + "\n" for line, _ in HOSTILE))
    return path


def test_import_names_each_hostile_line_and_stores_nothing(
    home: DataHome, hostile_list: Path
) -> None:
    run_indexer(home, "bank", "create", "list", check=True)
    with SqliteStore(home.store_path) as store:
        revision = store.revision()
    result = run_indexer(home, "import", "list", str(hostile_list))
    assert result.returncode == 3, result.stderr  # invalid input, as the CLI documents
    assert "Traceback" not in result.stderr
    for number, (_, words) in enumerate(HOSTILE, start=1):
        if words is not None:
            assert f"{hostile_list}:{number}: " in result.stderr
            line = next(x for x in result.stderr.splitlines() if f":{number}: " in x)
            assert words in line, line
            assert len(line) < 400  # a bounded prefix of the input, at most
    with SqliteStore(home.store_path) as store:
        assert (store.revision(), store.stats().entries) == (revision, 0)


def test_skip_invalid_keeps_the_good_line_and_lists_every_other(
    home: DataHome, hostile_list: Path, tmp_path: Path
) -> None:
    run_indexer(home, "bank", "create", "list", check=True)
    rejects = tmp_path / "rejects.txt"
    result = run_indexer(home, "import", "list", str(hostile_list), "--skip-invalid",
                         "--rejects", str(rejects))
    assert "Traceback" not in result.stderr and "added 1," in result.stderr, result.stderr
    assert len(rejects.read_text().splitlines()) == len(HOSTILE) - 1
    with SqliteStore(home.store_path) as store:
        (entry,) = store.find_entries("list", EntrySelector(external_ids=["fine"]))
        assert entry.metadata == {"case": 1}


def test_cli_bank_fields_have_the_same_limits(home: DataHome) -> None:
    long_name = run_indexer(home, "bank", "create", "b" * 100_000)
    assert long_name.returncode == 3 and "invalid bank name" in long_name.stderr
    assert len(long_name.stderr) < 500
    run_indexer(home, "bank", "create", "list", check=True)
    description = run_indexer(home, "bank", "update", "list", "--description",
                              "d" * (LIMITS.description_chars + 1))
    assert description.returncode == 3 and "description is 1,025 characters" in description.stderr
    tags = [arg for n in range(LIMITS.tags + 1) for arg in ("--tag", f"t{n}")]
    too_many = run_indexer(home, "bank", "update", "list", *tags)
    assert too_many.returncode == 3 and "33 tags, over the limit of 32" in too_many.stderr
    reason = run_indexer(home, "disable", "list", "--id", "1", "--reason",
                         "r" * (LIMITS.reason_chars + 1))
    assert reason.returncode == 3 and "reason is 1,025 characters" in reason.stderr


def test_add_images_checks_external_ids_like_every_other_path(
    home: DataHome, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    deep = folder / ("d" * 200) / ("e" * 200) / ("f" * 200)
    deep.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(deep / "long.png")
    odd = os.fsdecode(bytes(folder) + b"/odd-\xff.png")  # not UTF-8: legal on Linux
    Image.new("RGB", (64, 64), (30, 200, 30)).save(odd, "PNG")
    run_indexer(home, "bank", "create", "folder", check=True)
    result = run_indexer(home, "add-images", "folder", str(folder), "--algorithms", "md5")
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    assert "skipped 'dddd" in result.stderr and "external id is 611 characters" in result.stderr
    with SqliteStore(home.store_path) as store:
        assert len(store.find_entries("folder", EntrySelector(external_ids=["odd-\\xff.png"]))) == 1
        assert store.stats().entries == 1


# ---- through the server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("limits")
    with SqliteStore(home / "store.sqlite") as store:
        store.create_bank("first")
        store.create_bank("second")
        store.add_entries("first", [NewEntry("pdq", bytes.fromhex(_pdq(0)), "seed")])
        publish(store, home / "snapshots")
    with ServerProcess(home) as process:
        yield process


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, api_key=server.keys["admin"]) as client:
        yield client


def _counts(admin: Client) -> dict[str, int]:
    return {bank.name: bank.entry_count for bank in admin.list_banks()}


@pytest.mark.parametrize(("external_id", "metadata", "words"), [
    ("x" * 600, None, "entries[1].external_id: external id is 600 characters"),
    ("big", {"blob": "y" * 20_000}, "entries[1].metadata: metadata is 20,0"),
    ("deep", json.loads('{"a":' * 20 + "1" + "}" * 20), "entries[1].metadata: metadata is "
                                                        "nested deeper than 16 levels"),
    ("nan", {"n": float("nan")}, "entries[1].metadata: Fail to serialize NaN"),
    ("inf", {"n": float("inf")}, "entries[1].metadata: Fail to serialize Infinity"),
])
def test_add_entries_over_the_limits_is_invalid_argument_naming_the_entry(
    admin: Client, external_id: str, metadata: dict[str, object] | None, words: str
) -> None:
    before = _counts(admin)
    with pytest.raises(InvalidArgument) as err:
        admin.add_entries("first", [(("pdq", _pdq(20)), "ok", None),
                                    (("pdq", _pdq(21)), external_id, metadata)])
    assert words in err.value.details
    assert len(err.value.details) < 400
    assert _counts(admin) == before


def test_an_entry_at_the_limits_is_added_and_its_match_reaches_a_default_client(
    admin: Client, server: ServerProcess
) -> None:
    metadata = {"blob": "m" * (LIMITS.metadata_bytes - 200), "deep": json.loads(
        '{"a":' * (LIMITS.metadata_depth - 1) + "1" + "}" * (LIMITS.metadata_depth - 1))}
    external_id = "e" * LIMITS.external_id_chars
    assert admin.add_entries("second", [(("pdq", _pdq(30)), external_id, metadata)]).added == 1
    with Client(server.target, api_key=server.keys["scanner"],
                max_message_bytes=4 << 20) as scanner:  # gRPC's default receive limit
        (match,) = scanner.scan_hashes([("pdq", _pdq(30))]).matches
    assert match.external_id == external_id and match.metadata["blob"] == metadata["blob"]


def test_a_later_message_naming_another_bank_is_refused(
    admin: Client, server: ServerProcess
) -> None:
    before = _counts(admin)
    key = (("authorization", f"Bearer {server.keys['admin']}"),)
    with grpc.insecure_channel(server.target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)

        def entry(n: int) -> admin_pb2.NewEntry:
            return admin_pb2.NewEntry(hash=types_pb2.Hash(
                algorithm=types_pb2.ALGORITHM_PDQ, hex=_pdq(n)))

        stream = [admin_pb2.AddEntriesRequest(bank="first", entries=[entry(40)]),
                  admin_pb2.AddEntriesRequest(bank="first", entries=[entry(41)]),
                  admin_pb2.AddEntriesRequest(bank="second", entries=[entry(42)])]
        with pytest.raises(grpc.RpcError) as err:
            stub.AddEntries(iter(stream), metadata=key, timeout=30)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "message[2] names bank 'second'" in err.value.details()
        removal = [admin_pb2.RemoveEntriesRequest(bank="first", selector=admin_pb2.EntrySelector(
                       external_ids=["seed"])),
                   admin_pb2.RemoveEntriesRequest(bank="second", selector=admin_pb2.EntrySelector(
                       external_ids=["seed"]))]
        with pytest.raises(grpc.RpcError) as err:
            stub.RemoveEntries(iter(removal), metadata=key, timeout=30)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _counts(admin) == before


def test_a_huge_bank_name_is_invalid_argument_quoting_only_a_prefix(admin: Client) -> None:
    name = "b" * (1 << 20)
    with pytest.raises(InvalidArgument) as err:
        admin.create_bank(name)
    assert "invalid bank name 'bbbb" in err.value.details and len(err.value.details) < 400
    with pytest.raises(InvalidArgument) as err:
        admin.add_entries(name, [(("pdq", _pdq(50)), None, None)])
    assert len(err.value.details) < 400
    with pytest.raises(InvalidArgument, match="description is 1,025 characters"):
        admin.create_bank("described", description="d" * (LIMITS.description_chars + 1))
    with pytest.raises(InvalidArgument, match="33 tags, over the limit of 32"):
        admin.create_bank("tagged", tags=[f"t{n}" for n in range(LIMITS.tags + 1)])


def test_reasons_are_capped_and_logged_only_in_a_bounded_clean_form(
    admin: Client, server: ServerProcess
) -> None:
    with pytest.raises(InvalidArgument, match="reason is 1,048,576 characters"):
        admin.set_entries_disabled("first", external_ids=["seed"], reason="r" * (1 << 20))
    reason = "forged\n{\"level\": \"error\"}" + "q" * 900
    assert admin.set_entries_disabled("first", external_ids=["seed"], reason=reason) == 1
    admin.set_entries_disabled("first", disabled=False, external_ids=["seed"])
    logged: list[str] = []
    deadline = time.monotonic() + 60  # a hang guard: the log is read from the server's stderr
    while len(logged) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        logged = [r["reason"] for r in server.records()
                  if r.get("action") == "set_entries_disabled" and r.get("disabled")]
    assert logged == ['forged\\n{"level": "error"}' + "q" * (LIMITS.logged_chars - 25) + "..."]
    assert "r" * 1000 not in server.log


# ---- entries stored before the limits --------------------------------------------------------


def test_a_stored_entry_with_unrepresentable_metadata_is_still_reported(tmp_path: Path) -> None:
    """A store written by an older version (here: the row written directly) may hold metadata
    no protobuf Struct can carry; every scan matching it used to fail UNKNOWN."""
    home = tmp_path / "home"
    with SqliteStore(home / "store.sqlite") as store:
        store.create_bank("old")
        store.add_entries("old", [NewEntry("pdq", bytes.fromhex(_pdq(60)), "old-1", {"k": 1}),
                                  NewEntry("pdq", bytes.fromhex(_pdq(61)), "old-2", {"k": 2})])
    stored = ('{"big": ' + "7" * 401 + ', "deep": {"d": ' + _nested(900) + '}, "text": "\\udfff",'
              ' "nan": NaN, "fine": "kept"}')
    db = sqlite3.connect(home / "store.sqlite")
    with db:
        db.execute("UPDATE entries SET metadata = ? WHERE external_id = 'old-1'", (stored,))
        db.execute("UPDATE entries SET metadata = ? WHERE external_id = 'old-2'",
                   (json.dumps({"blob": "z" * (5 << 20)}),))  # 5 MB: over any client's 4 MB
    db.close()
    with SqliteStore(home / "store.sqlite") as store:
        publish(store, home / "snapshots", force=True)
    with ServerProcess(home) as server, Client(
            server.target, api_key=server.keys["scanner"]) as scanner:
        (match,) = scanner.scan_hashes([("pdq", _pdq(60))]).matches
        (huge,) = scanner.scan_hashes([("pdq", _pdq(61))]).matches
    assert (huge.external_id, len(huge.metadata)) == ("old-2", 0)  # reported, metadata left out
    assert match.external_id == "old-1"
    metadata = dict(match.metadata)
    assert metadata["fine"] == "kept" and metadata["big"] == "7" * 401
    assert metadata["text"] == "\\udfff" and metadata["nan"] == "nan"


def test_scan_and_item_ids_are_bounded_like_every_other_input(admin: Client) -> None:
    """A caller's id is echoed back and written to the audit log: a 1 MB one is refused, and
    quoted back only as a prefix."""
    huge = "r" * (1 << 20)
    with pytest.raises(InvalidArgument, match="request_id 'rrrr") as err:
        admin.scan_hashes([("pdq", _pdq(1))], request_id=huge)
    assert len(err.value.details) < 400
    fine = "r" * LIMITS.request_id_chars
    assert admin.scan_hashes([("pdq", _pdq(1))], request_id=fine).request_id == fine
    item = next(iter(admin.scan_images([(huge, [("pdq", _pdq(1))])])))
    assert item.WhichOneof("outcome") == "error" and "item id 'rrrr" in item.error.message
    assert len(item.id) == LIMITS.request_id_chars
