"""The client package on its own, the `hashscan` CLI, and TLS / mutual TLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hashsvc_client import Client, Tls, Unavailable

from tests.conftest import BRIDGE_ORIGINAL, IMAGES, PHOTOS
from tests.server_process import ServerProcess
from tests.test_server import BRIDGE_PDQ, _seed_bridge_bank
from tests.tls_certs import make_pki

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("hashscan")
    _seed_bridge_bank(home)
    with ServerProcess(home) as process:
        yield process


def _hashscan(server: ServerProcess | None, *args: str,
              key: str = "scanner") -> subprocess.CompletedProcess[str]:
    env_args = ["--server", server.target, "--api-key", server.keys[key]] if server else []
    return subprocess.run(
        [sys.executable, "-m", "hashsvc_client.cli", *env_args, *args],
        capture_output=True, text=True, timeout=300,
    )


def _records(stdout: str) -> dict[str, dict[str, Any]]:
    return {r["file"]: r for r in map(json.loads, stdout.splitlines())}


@pytest.mark.parametrize("hash_only", [False, True], ids=["images", "hash-only"])
def test_hashscan_folder_reports_matches_and_exits_1(
    server: ServerProcess, hash_only: bool
) -> None:
    folder = IMAGES / "bridge-mods"
    photo = sorted(PHOTOS.glob("*.jpg"))[0]
    result = _hashscan(server, str(folder), str(photo), *(["--hash-only"] if hash_only else []))
    assert result.returncode == 1, result.stderr
    records = _records(result.stdout)
    assert len(records) == len(list(folder.iterdir())) + 1
    assert all(records[str(p)]["matched"] for p in folder.iterdir())
    assert records[str(photo)]["matched"] is False
    match = records[str(BRIDGE_ORIGINAL)]["matches"][0]
    assert (match["bank"], match["external_id"]) == ("bridge", "bridge-orig")
    # hashscan hashes locally with the reference pipeline, as the list was hashed: exact. The
    # server scans with fast PDQ, within a few bits of it (README: Performance).
    assert match["distance"] == 0 if hash_only else 0 <= match["distance"] <= 10


def test_hashscan_keeps_local_paths_out_of_the_server_audit_log(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Issue 12, item 18: a file's path is not its request id; the server sees a hash of it."""
    from hashsvc_client.cli import item_id

    upload = tmp_path / "private-case-folder" / "alice-upload.jpg"
    upload.parent.mkdir()
    upload.write_bytes(BRIDGE_ORIGINAL.read_bytes())
    for mode in ([], ["--hash-only"]):
        result = _hashscan(server, str(upload), *mode)
        assert result.returncode == 1, result.stderr
        assert _records(result.stdout)[str(upload)]["matched"]
    audit = (server.home / "audit.jsonl").read_text()
    assert audit.count(item_id(str(upload))) == 2
    assert "private-case-folder" not in audit and "alice-upload" not in audit


def test_hashscan_into_a_closed_pipe_ends_quietly(server: ServerProcess) -> None:
    from tests.test_cli import closed_pipe_run

    result = closed_pipe_run([sys.executable, "-m", "hashsvc_client.cli", "--server",
                              server.target, "--api-key", server.keys["scanner"],
                              str(BRIDGE_ORIGINAL)])
    assert (result.returncode, result.stderr) == (141, "")


def test_healthcheck_finds_the_server_through_hashsvc_server(server: ServerProcess) -> None:
    """As every client does: HASHSVC_SERVER names the server when --target is not given."""
    env = {k: v for k, v in os.environ.items() if k != "HASHSVC_LISTEN"}
    result = subprocess.run([sys.executable, "-m", "hashsvc", "healthcheck"], capture_output=True,
                            text=True, timeout=60, env={**env, "HASHSVC_SERVER": server.target})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{server.target}: SERVING\n"


DIHEDRAL_COPIES = IMAGES / "dih"  # the bridge, rotated and mirrored eight ways


def test_hash_only_matches_rotated_and_flipped_copies_as_images_do(server: ServerProcess) -> None:
    """Issue 12, defect 16: the local hashing sends the 8 dihedral PDQ hashes, marked, so all 8
    reference copies match through the hashes path and report the transform ScanImage reports;
    --no-dihedral turns it off."""
    files = sorted(DIHEDRAL_COPIES.iterdir())
    assert len(files) == 8
    as_images = _records(_hashscan(server, str(DIHEDRAL_COPIES)).stdout)
    hashed = _hashscan(server, str(DIHEDRAL_COPIES), "--hash-only")
    assert hashed.returncode == 1, hashed.stderr
    as_hashes = _records(hashed.stdout)
    transforms = set()
    for path in files:
        by_image, by_hash = as_images[str(path)]["matches"], as_hashes[str(path)]["matches"]
        assert by_hash and by_image, path.name
        assert by_hash[0]["query_transform"] == by_image[0]["query_transform"], path.name
        transforms.add(by_hash[0]["query_transform"])
    assert len(transforms) == 8  # each copy matched through its own variant
    plain = _records(_hashscan(server, str(DIHEDRAL_COPIES), "--hash-only", "--no-dihedral").stdout)
    assert [p.name for p in files if plain[str(p)]["matched"]] == ["bridge-1-original.jpg"]


def test_scan_hashes_of_hash_file_matches_every_dihedral_copy(server: ServerProcess) -> None:
    from hashsvc_client import InvalidArgument
    from hashsvc_client.hashing import hash_file
    from hashsvc_client.v1 import types_pb2

    with Client(server.target, api_key=server.keys["scanner"]) as client:
        for path in sorted(DIHEDRAL_COPIES.iterdir()):
            hashes = hash_file(path)
            assert len(hashes) == 2 + 7 and hashes[0].transform == types_pb2.TRANSFORM_UNSPECIFIED
            result = client.scan_hashes(hashes)
            assert result.matched, path.name
            match = result.matches[0]
            assert hashes[match.hash_index].transform in (match.query_transform,
                                                          types_pb2.TRANSFORM_UNSPECIFIED)
            # The server honours disable_dihedral for marked hashes as it does for images.
            plain_only = client.scan_hashes(hashes, dihedral=False)
            assert plain_only.matched == (path.name == "bridge-1-original.jpg")
        digest = hash_file(DIHEDRAL_COPIES / "bridge-1-original.jpg", ("md5",))[0]
        digest.transform = types_pb2.TRANSFORM_ROTATE_90
        with pytest.raises(InvalidArgument, match="perceptual hashes only"):
            client.scan_hashes([digest])


def test_hashscan_exit_codes(server: ServerProcess, tmp_path: Path) -> None:
    photo = sorted(PHOTOS.glob("*.jpg"))[0]
    assert _hashscan(server, str(photo)).returncode == 0
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(BRIDGE_ORIGINAL.read_bytes()[:3000])
    for mode in ([], ["--hash-only"]):
        result = _hashscan(server, str(photo), str(broken), *mode)
        assert result.returncode == 3, result.stderr
        assert "error" in _records(result.stdout)[str(broken)]
    denied = subprocess.run(
        [sys.executable, "-m", "hashsvc_client.cli", "--server", server.target,
         "--api-key", "hsk_nope", str(photo)], capture_output=True, text=True, timeout=60)
    assert denied.returncode == 4 and "UNAUTHENTICATED" in denied.stderr


def test_unreachable_server_is_unavailable_after_retries() -> None:
    with Client("127.0.0.1:1", api_key="x", timeout=5) as client, pytest.raises(Unavailable):
        client.scan_hashes([("pdq", BRIDGE_PDQ)])


def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    ca, server_pem, client_pem = make_pki(tmp_path)
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    tls_flags = ("--tls-cert", str(server_pem.cert), "--tls-key", str(server_pem.key))
    with ServerProcess(home, *tls_flags) as server:
        with Client(server.target, api_key=server.keys["scanner"], tls=Tls(ca.cert)) as client:
            assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
        with Client(server.target, api_key=server.keys["scanner"], timeout=3) as plain, \
                pytest.raises(Unavailable):
            plain.scan_hashes([("pdq", BRIDGE_PDQ)])
    (home / "keys.toml").unlink()
    with ServerProcess(home, *tls_flags, "--tls-client-ca", str(ca.cert)) as server:
        with Client(server.target, api_key=server.keys["scanner"],
                    tls=Tls(ca.cert, client_pem.cert, client_pem.key)) as client:
            assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
        with Client(server.target, api_key=server.keys["scanner"], tls=Tls(ca.cert),
                    timeout=3) as no_cert, pytest.raises(Unavailable):
            no_cert.scan_hashes([("pdq", BRIDGE_PDQ)])


@pytest.mark.slow
def test_client_installs_and_runs_without_the_server(tmp_path: Path) -> None:
    """`pip install ./clients/python` in a fresh venv: no faiss, no server code, hashscan works."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(ROOT / "clients" / "python")],
                   check=True, capture_output=True, timeout=600)
    probe = subprocess.run(
        [python, "-c", "import importlib.util as u, hashsvc_client, hashsvc_client.cli; "
         "print(u.find_spec('faiss'), u.find_spec('hashsvc'), u.find_spec('numpy'))"],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path,
    )
    assert probe.stdout.split() == ["None", "None", "None"]
    help_text = subprocess.run([env_dir / "bin" / "hashscan", "--help"], capture_output=True,
                               text=True, timeout=60, check=True).stdout
    assert "--hash-only" in help_text


def test_async_client_scans(server: ServerProcess) -> None:
    import asyncio

    from hashsvc_client import AsyncClient, InvalidArgument

    edit = (IMAGES / "bridge-mods" / "blur-a-lot.jpg").read_bytes()

    async def scenario() -> None:
        async with AsyncClient(server.target, api_key=server.keys["scanner"]) as client:
            image, by_hash = await asyncio.gather(
                client.scan_image(edit, request_id="a-1"),
                client.scan_hashes([("pdq", BRIDGE_PDQ)]),
            )
            assert image.matched and image.request_id == "a-1" and by_hash.matched
            streamed = [r async for r in client.scan_images(
                [("edit", edit), ("photo", sorted(PHOTOS.glob("*.jpg"))[0].read_bytes())])]
            assert [(r.id, r.result.matched) for r in streamed] == [("edit", True),
                                                                   ("photo", False)]
            try:
                await client.scan_image(b"junk")
            except InvalidArgument as err:
                assert "not a supported image format" in err.details
            else:
                raise AssertionError("junk was accepted")

    asyncio.run(scenario())
