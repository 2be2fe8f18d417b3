"""The gRPC service end to end: the real server in a child process, the real client."""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from hashsvc_client import (
    Client,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from hashsvc_client.hashing import hash_file
from hashsvc_client.v1 import types_pb2
from PIL import Image, ImageOps

from hashsvc.hashing.algorithms import PDQ
from hashsvc.hashing.imaging import Upload
from hashsvc.snapshot import publish
from hashsvc.store import NewEntry, SqliteStore
from tests.conftest import BRIDGE_ORIGINAL, IMAGES, PHOTOS, hamming, png_header_only
from tests.server_process import ServerProcess

BRIDGE_PDQ = PDQ.compute(Upload(BRIDGE_ORIGINAL.read_bytes())).value


def _seed_bridge_bank(home: Path) -> None:
    with SqliteStore(home / "store.sqlite") as store:
        store.create_bank("bridge", tags=["demo"])
        store.add_entries("bridge", [NewEntry("pdq", BRIDGE_PDQ, "bridge-orig", {"case": 7})])
        publish(store, home / "snapshots")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("server")
    _seed_bridge_bank(home)
    with ServerProcess(home) as process:
        yield process


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, api_key=server.keys["admin"]) as client:
        yield client


@pytest.fixture(scope="module")
def scanner(server: ServerProcess) -> Iterator[Client]:
    with Client(server.target, api_key=server.keys["scanner"]) as client:
        yield client


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def test_scan_image_matches_an_edit_with_distance_and_explanation(scanner: Client) -> None:
    data = (IMAGES / "bridge-mods" / "sharpen-a-lot.jpg").read_bytes()
    result = scanner.scan_image(data, request_id="req-1")
    assert result.matched and result.request_id == "req-1"
    (match,) = result.matches
    assert (match.bank, match.external_id, match.threshold) == ("bridge", "bridge-orig", 31)
    assert 0 < match.distance <= 31
    assert match.algorithm == types_pb2.ALGORITHM_PDQ
    assert match.query_transform == types_pb2.TRANSFORM_IDENTITY
    assert list(match.tags) == ["demo"] and dict(match.metadata) == {"case": 7.0}
    pdq = result.hashes[match.hash_index]  # the hash that matched
    assert pdq.algorithm == types_pb2.ALGORITHM_PDQ
    assert pdq.quality == 100 and not pdq.low_quality
    assert result.snapshot_version and result.timings.total_ms > 0
    assert result.timings.decode_ms > 0 and result.timings.hash_ms > 0


def test_rotated_image_matches_with_the_transform_reported(scanner: Client) -> None:
    rotated = _jpeg(Image.open(BRIDGE_ORIGINAL).rotate(90, expand=True))
    (match,) = scanner.scan_image(rotated).matches
    assert match.query_transform == types_pb2.TRANSFORM_ROTATE_270
    assert not scanner.scan_image(rotated, dihedral=False).matched


def test_unrelated_photo_does_not_match(scanner: Client) -> None:
    photo = next(iter(sorted(PHOTOS.glob("*.jpg"))))
    assert not scanner.scan_image(photo.read_bytes()).matched


def test_hash_only_scan_never_sends_the_image(scanner: Client) -> None:
    hashes = hash_file(IMAGES / "bridge-mods" / "blur-a-lot.jpg")
    result = scanner.scan_hashes(hashes)
    assert [m.external_id for m in result.matches] == ["bridge-orig"]
    assert [h.hex for h in result.hashes] == [h.hex for h in hashes]  # echoed, flagged
    assert result.timings.decode_ms == 0
    # Hex and raw bytes are both accepted.
    assert scanner.scan_hashes([("pdq", BRIDGE_PDQ)]).matches[0].distance == 0
    assert scanner.scan_hashes([("pdq", BRIDGE_PDQ.hex().upper())]).matched


def test_batched_hashes_say_which_of_them_matched(scanner: Client) -> None:
    """A batch of unrelated lookups: each match names the request hash it came from."""
    unrelated = [("pdq", bytes([i]) * 32) for i in range(5)]
    batch = [*unrelated[:3], ("pdq", BRIDGE_PDQ), *unrelated[3:], ("pdq", BRIDGE_PDQ)]
    (match,) = scanner.scan_hashes(batch).matches  # one entry: reported once, closest first
    assert match.hash_index == 3 and match.distance == 0
    near = bytearray(BRIDGE_PDQ)
    near[0] ^= 0xFF  # 8 bits away
    (match,) = scanner.scan_hashes([*unrelated, ("pdq", bytes(near))]).matches
    assert match.hash_index == 5 and match.distance == 8


@pytest.mark.parametrize(
    "path",
    [*sorted((IMAGES / "bridge-mods").iterdir())[:4], IMAGES / "misc" / "small.jpg",
     IMAGES / "pytx" / "LA.png"],
    ids=lambda p: p.name,
)
def test_local_hashing_agrees_with_the_server(scanner: Client, path: Path) -> None:
    local = {h.algorithm: (h.hex, h.quality)
             for h in hash_file(path, ("pdq", "md5", "sha256"), dihedral=False)}
    remote = scanner.hash_image(path.read_bytes(), algorithms=("pdq", "md5", "sha256"))
    assert {h.algorithm: (h.hex, h.quality if h.HasField("quality") else 0)
            for h in remote} == local


def test_stream_of_1000_images_keeps_ids_order_and_per_item_errors(scanner: Client) -> None:
    photos = sorted(PHOTOS.glob("*.jpg"))[:996]
    edits = [IMAGES / "bridge-mods" / name for name in ("blur-a-lot.jpg", "shrink-a-lot.jpg")]

    def items() -> Iterator[tuple[str, bytes | list[types_pb2.Hash]]]:
        for index, path in enumerate(photos):
            yield f"photo-{index}", path.read_bytes()
            if index == 100:
                yield "broken", BRIDGE_ORIGINAL.read_bytes()[:2000]
                yield "edit-by-hash", hash_file(edits[0])
        yield from ((f"edit-{i}", p.read_bytes()) for i, p in enumerate(edits))

    responses = list(scanner.scan_images(items(), timeout=600))
    assert len(responses) == 1000
    expected_ids = [f"photo-{i}" for i in range(101)] + ["broken", "edit-by-hash"] + \
        [f"photo-{i}" for i in range(101, 996)] + ["edit-0", "edit-1"]
    assert [r.id for r in responses] == expected_ids
    by_id = {r.id: r for r in responses}
    assert by_id["broken"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert by_id["broken"].error.reason == "truncated"
    assert "truncated JPEG" in by_id["broken"].error.message
    matched = sorted(r.id for r in responses if r.HasField("result") and r.result.matched)
    assert matched == ["edit-0", "edit-1", "edit-by-hash"]



@pytest.mark.parametrize(
    ("image", "message"),
    [
        (BRIDGE_ORIGINAL.read_bytes()[:5000], "truncated JPEG"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not a supported image format"),
        (b"", "empty file"),
        (png_header_only(50_000, 50_000), "50000×50000"),
    ],
    ids=["corrupt", "unsupported", "empty", "decompression-bomb"],
)
def test_bad_images_are_invalid_argument_with_a_reason(
    scanner: Client, image: bytes, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        scanner.scan_image(image)


@pytest.mark.parametrize(
    ("hashes", "message"),
    [
        ([("pdq", "abc")], r"hashes\[0\]: invalid pdq hash 'abc': expected 64 hex digits"),
        ([("md5", "z" * 32)], r"hashes\[0\]: invalid md5 hash .* not hexadecimal"),
        ([("pdq", b"\x00" * 5)], r"hashes\[0\]: pdq hash must be 32 raw bytes, got 5"),
        ([types_pb2.Hash(hex="00")], r"hashes\[0\]: unspecified or unknown algorithm 0"),
        ([], "no hashes given"),
    ],
)
def test_malformed_hashes_are_invalid_argument(
    scanner: Client, hashes: list[object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        scanner.scan_hashes(hashes)  # type: ignore[arg-type]


def test_unknown_bank_filter_is_not_found(scanner: Client) -> None:
    with pytest.raises(NotFound, match="'nope' not in snapshot"):
        scanner.scan_hashes([("pdq", BRIDGE_PDQ)], banks=["nope"])


def test_deadline_is_honoured(scanner: Client) -> None:
    big = (IMAGES / "exif-rotn" / "exif-rotn-1.jpg").read_bytes()  # 12 MP: ~20 ms (fast PDQ)
    with pytest.raises(DeadlineExceeded):
        scanner.scan_image(big, timeout=0.005)


def test_auth_by_role(server: ServerProcess) -> None:
    request = [("pdq", BRIDGE_PDQ)]
    with Client(server.target, api_key="") as anonymous, pytest.raises(
        Unauthenticated, match="missing API key"
    ):
        anonymous.scan_hashes(request)
    with Client(server.target, api_key="hsk_wrong") as wrong, pytest.raises(
        Unauthenticated, match="unknown API key"
    ):
        wrong.scan_hashes(request)
    with Client(server.target, api_key=server.keys["scanner"]) as scan_only:
        assert scan_only.scan_hashes(request).matched
        with pytest.raises(PermissionDenied, match="lacks the 'admin' role"):
            scan_only.list_banks()
    with Client(server.target, api_key=server.keys["admin"]) as admin_key:
        assert admin_key.scan_hashes(request).matched  # admin includes scan
        assert [b.name for b in admin_key.list_banks()][:1] == ["bridge"]
    # Keys are compared by hash and never logged.
    assert not any(key in server.log for key in server.keys.values())


def test_health_serving_and_reflection_need_no_key(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "hashsvc.v1.ScanService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"hashsvc.v1.ScanService", "hashsvc.v1.AdminService",
                "grpc.health.v1.Health"} <= services
        method = database.FindFileContainingSymbol("hashsvc.v1.ScanService")
        assert method.name == "hashsvc/v1/scan.proto"


def test_admin_changes_are_visible_after_publish_without_restart(
    admin: Client, scanner: Client
) -> None:
    coaster = IMAGES / "pen-and-coaster.png"
    coaster_pdq = PDQ.compute(Upload(coaster.read_bytes())).value
    bank = admin.create_bank("coasters", description="admin test", tags=["t1"],
                             thresholds={"pdq": 20})
    assert (bank.name, bank.kind, dict(bank.thresholds)) == (
        "coasters", types_pb2.BANK_KIND_MATCH, {"pdq": 20})
    added = admin.add_entries("coasters", [(("pdq", coaster_pdq), "c-1", {"src": "t"}),
                                           (("pdq", coaster_pdq), "c-dup", None)])
    assert (added.added, added.duplicates) == (1, 1)
    # Visible at once, before any publish: the server applies store changes as a delta.
    (match,) = scanner.scan_image(coaster.read_bytes()).matches
    assert (match.bank, match.threshold, match.external_id) == ("coasters", 20, "c-1")

    published = admin.publish()
    assert published.published and published.counts.by_algorithm["pdq"] == 2
    (match,) = scanner.scan_image(coaster.read_bytes()).matches  # now from the snapshot
    assert (match.bank, match.threshold, match.external_id) == ("coasters", 20, "c-1")

    status = admin.index_status()
    assert status.version == published.version and status.up_to_date
    assert status.counts.by_bank["coasters"].by_algorithm["pdq"] == 1

    assert admin.set_entries_disabled("coasters", external_ids=["c-1"], reason="fp") == 1
    assert not scanner.scan_image(coaster.read_bytes()).matched  # tombstoned at once
    assert not admin.index_status().up_to_date
    admin.publish()
    assert not scanner.scan_image(coaster.read_bytes()).matched

    updated = admin.update_bank("coasters", new_name="coasters-2", thresholds={"pdq": 10})
    assert (updated.name, dict(updated.thresholds)) == ("coasters-2", {"pdq": 10})
    assert admin.remove_entries("coasters-2", external_ids=["c-1"]) == 1
    assert admin.delete_bank("coasters-2") == 0
    with pytest.raises(NotFound):
        admin.delete_bank("coasters-2")
    with pytest.raises(InvalidArgument, match=r"entries\[1\].hash: invalid pdq hash"):
        admin.create_bank("atomic")
        admin.add_entries("atomic", [(("pdq", coaster_pdq), "ok", None),
                                     (("pdq", "00"), "bad", None)])
    assert [b.entry_count for b in admin.list_banks() if b.name == "atomic"] == [0]


def test_bank_strategies_through_the_admin_api_and_explained_matches(
    admin: Client, scanner: Client
) -> None:
    photo = sorted(PHOTOS.iterdir())[1]
    with Image.open(photo) as image:
        padded = _jpeg(ImageOps.expand(image.convert("RGB"), (80, 100, 80, 100), fill=0))
    plain = PDQ.compute(Upload(photo.read_bytes())).value
    admin.create_bank("plain-list")
    bank = admin.create_bank("trimming-list",
                             strategies=types_pb2.MatchStrategies(trim_borders=True))
    assert bank.strategies.trim_borders and not bank.strategies.no_dihedral
    for name in ("plain-list", "trimming-list"):
        admin.add_entries(name, [(("pdq", plain), f"{name}-1", None)])
    (match,) = scanner.scan_image(padded).matches  # through the delta, before any publish
    assert (match.bank, match.query_trimmed, match.entry_variant) == ("trimming-list", True, "")
    admin.publish()
    (match,) = scanner.scan_image(padded).matches  # and from the snapshot
    assert (match.bank, match.query_trimmed) == ("trimming-list", True)

    updated = admin.update_bank("trimming-list", strategies=types_pb2.MatchStrategies(
        no_dihedral=True, crop_variants=[3]))
    assert updated.strategies.no_dihedral and list(updated.strategies.crop_variants) == [3]
    ways = admin.update_bank("plain-list", strategies=types_pb2.MatchStrategies(
        variant_margin=12, margins={"dihedral": 0}, rotation_variants=[3], corner_crops=[4]))
    assert (dict(ways.strategies.margins), list(ways.strategies.rotation_variants),
            list(ways.strategies.corner_crops)) == ({"dihedral": 0}, [3], [4])
    with pytest.raises(InvalidArgument, match="unknown way"):
        admin.update_bank("plain-list", strategies=types_pb2.MatchStrategies(
            margins={"rotate": 1}))
    admin.publish()
    assert not scanner.scan_image(padded).matched
    with pytest.raises(InvalidArgument, match="whole percentages"):
        admin.update_bank("trimming-list",
                          strategies=types_pb2.MatchStrategies(crop_variants=[90]))
    for name in ("plain-list", "trimming-list"):
        admin.delete_bank(name)
    admin.publish()


def test_uploaded_images_are_never_written_or_logged(
    server: ServerProcess, scanner: Client
) -> None:
    marker = b"HASHSVC-PRIVACY-MARKER-7f3a9c"
    image = Image.open(BRIDGE_ORIGINAL)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", comment=marker)
    scanner.scan_image(buffer.getvalue())
    with pytest.raises(InvalidArgument):
        scanner.scan_image(marker * 100)
    time.sleep(0.3)
    assert marker.decode() not in server.log
    for path in server.home.rglob("*"):
        if path.is_file():
            assert marker not in path.read_bytes(), f"{path} contains upload bytes"


def test_hot_reload_under_concurrent_scans_has_no_failed_call(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    coaster_pdq = PDQ.compute(Upload((IMAGES / "pen-and-coaster.png").read_bytes())).value
    failures: list[BaseException] = []
    calls = [0]
    stop = threading.Event()
    with ServerProcess(home) as server:

        def scan_forever() -> None:
            with Client(server.target, api_key=server.keys["scanner"]) as client:
                while not stop.is_set():
                    try:
                        result = client.scan_hashes([("pdq", BRIDGE_PDQ)])
                        assert result.matches[0].external_id == "bridge-orig"
                        calls[0] += 1
                    except BaseException as err:  # any failure at all counts
                        failures.append(err)

        threads = [threading.Thread(target=scan_forever) for _ in range(6)]
        for thread in threads:
            thread.start()
        with Client(server.target, api_key=server.keys["admin"]) as admin, \
                Client(server.target, api_key=server.keys["scanner"]) as probe:
            admin.create_bank("new")
            for round_ in range(5):
                value = bytes([round_]) + coaster_pdq[1:]
                admin.add_entries("new", [(("pdq", value), f"round-{round_}", None)])
                if round_ % 2:  # alternate: the admin API, and an external `indexer publish`
                    admin.publish()
                else:
                    with SqliteStore(home / "store.sqlite") as store:
                        publish(store, home / "snapshots")
                deadline = time.monotonic() + 10
                while not any(m.external_id == f"round-{round_}"
                              for m in probe.scan_hashes([("pdq", value)]).matches):
                    assert time.monotonic() < deadline, "new snapshot never served"
                    time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert calls[0] > 100


def test_corrupt_snapshot_is_refused_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    with ServerProcess(home) as server, \
            Client(server.target, api_key=server.keys["admin"]) as client:
        before = client.index_status()
        snapshots = home / "snapshots"
        corrupt = snapshots / "29991231T000000.000000Z-r999"
        shutil.copytree(snapshots / before.version, corrupt)
        (corrupt / "pdq.mih.ids.npy").write_bytes(b"garbage")
        (snapshots / "current").write_text(corrupt.name + "\n")
        deadline = time.monotonic() + 10
        while client.index_status().failed_loads == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status = client.index_status()
        assert status.version == before.version and status.current_on_disk == corrupt.name
        assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
        assert any("refused snapshot" in r.get("message", "") and
                   "checksum mismatch" in r.get("error", "") for r in server.records())


def test_health_is_not_serving_until_a_snapshot_loads(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    snapshots = home / "snapshots"
    version = (snapshots / "current").read_text().strip()
    (snapshots / version / "entries.ids.npy").write_bytes(b"corrupt")
    with ServerProcess(home) as server, grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="")
        assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with Client(server.target, api_key=server.keys["scanner"]) as client, \
                pytest.raises(Unavailable, match="no snapshot is loaded"):
            client.scan_hashes([("pdq", BRIDGE_PDQ)], timeout=3)
        with SqliteStore(home / "store.sqlite") as store:
            publish(store, snapshots, force=True)
        deadline = time.monotonic() + 10
        while health.Check(check, timeout=5).status != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_limits_oversized_messages_and_overload(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    big = (IMAGES / "exif-rotn" / "exif-rotn-1.jpg").read_bytes()  # ~2-4 MB, 12 MP
    flags = ("--max-image-bytes", str(len(big) + 10), "--max-concurrent-rpcs", "2",
             "--max-image-pixels", "20000000")
    with ServerProcess(home, *flags) as server, \
            Client(server.target, api_key=server.keys["scanner"]) as client:
            # Over our limit but within the transport's: a precise INVALID_ARGUMENT.
            with pytest.raises(InvalidArgument, match="bytes exceeds the limit"):
                client.scan_image(big + b"\0" * 100)
            # Far over the transport's limit: gRPC itself refuses it.
            with pytest.raises(ResourceExhausted):
                client.scan_image(b"\0" * (len(big) + 3_000_000))
            # More concurrent calls than allowed: the excess fail fast, nothing queues.
            outcomes: list[str] = []

            def call() -> None:
                try:
                    client.scan_image(big, timeout=60)
                    outcomes.append("ok")
                except ResourceExhausted as err:
                    outcomes.append("exhausted" if "server overloaded" in err.details
                                    else err.details)

            threads = [threading.Thread(target=call) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert "exhausted" in outcomes and "ok" in outcomes
            assert set(outcomes) <= {"ok", "exhausted"}


def test_hamming_helper_matches_the_snapshot_distance(scanner: Client) -> None:
    # Guard for the tests above: the reported distance is the true Hamming distance.
    path = IMAGES / "bridge-mods" / "shrink-a-lot.jpg"
    (match,) = scanner.scan_image(path.read_bytes()).matches
    assert match.distance == hamming(PDQ.compute(Upload(path.read_bytes())).value, BRIDGE_PDQ)


def test_stream_answers_each_item_without_waiting_for_a_full_window(scanner: Client) -> None:
    """An interactive client sends one item, waits for its answer, then sends the next."""
    import queue

    outbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
    photos = sorted(PHOTOS.glob("*.jpg"))[:3]

    def items() -> Iterator[tuple[str, bytes]]:
        while (item := outbox.get()) is not None:
            yield item

    responses = scanner.scan_images(items(), timeout=30)
    for path in photos:
        outbox.put((path.name, path.read_bytes()))
        assert next(responses).id == path.name  # stalled until the deadline before the fix
    outbox.put(None)
    assert list(responses) == []


def test_reference_pdq_scans_match_like_the_default_fast_path(tmp_path: Path) -> None:
    """Scans hash with fast PDQ by default (every other test here); `--no-scan-fast-pdq`
    switches them to the reference pipeline, which must match the same edits."""
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    with ServerProcess(home, "--no-scan-fast-pdq") as server, \
            Client(server.target, api_key=server.keys["scanner"]) as client:
        for path in sorted((IMAGES / "bridge-mods").iterdir()):
            (match,) = client.scan_image(path.read_bytes()).matches
            assert match.external_id == "bridge-orig", path.name
        rotated = _jpeg(Image.open(BRIDGE_ORIGINAL).rotate(90, expand=True))
        assert client.scan_image(rotated).matches[0].query_transform == \
            types_pb2.TRANSFORM_ROTATE_270
        with pytest.raises(InvalidArgument, match="truncated JPEG"):
            client.scan_image(BRIDGE_ORIGINAL.read_bytes()[:5000])
        # HashImage stays reference-exact: its hashes go into lists shared with other tools.
        (pdq,) = client.hash_image(BRIDGE_ORIGINAL.read_bytes(), algorithms=("pdq",))
        assert pdq.hex == BRIDGE_PDQ.hex()
