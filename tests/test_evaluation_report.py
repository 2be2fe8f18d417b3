"""AdminService.GetEvaluationReport on the real server, over gRPC and HTTP: the figures and
plots of a real (tiny) `indexer evaluate --to-home` run; NOT_FOUND before there is one; a
damaged report refused with what is wrong."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hashsvc_client import Client, NotFound, PermissionDenied, ServerError

from hashsvc.home import DataHome
from tests.conftest import run_indexer
from tests.http_client import http
from tests.server_process import ServerProcess
from tests.test_server import _seed_bridge_bank
from tests.tiny_evaluation import PHOTO_COUNT, make_report


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("evaluation-home")
    _seed_bridge_bank(home)
    with ServerProcess(home) as process:
        yield process


def _admin(server: ServerProcess) -> Client:
    return Client(server.target, api_key=server.keys["admin"])


def test_without_a_report_the_call_is_not_found_and_says_how_to_make_one(
        server: ServerProcess) -> None:
    with _admin(server) as admin, pytest.raises(NotFound) as missing:
        admin.evaluation_report()
    assert "indexer evaluate PHOTOS --to-home" in str(missing.value)
    answer = http(f"http://127.0.0.1:{server.http_port}", "GET", "/v1/evaluation-report",
                  key=server.keys["admin"])
    assert answer.status == 404 and answer.json()["type"].endswith("/NOT_FOUND")


def test_the_report_of_indexer_evaluate_to_home_is_served_with_its_plots(
        server: ServerProcess, tmp_path: Path) -> None:
    make_report(DataHome(server.home), tmp_path)
    with _admin(server) as admin:
        report = admin.evaluation_report()
    assert report.originals == PHOTO_COUNT and report.list_size == 1000
    assert report.pairs == PHOTO_COUNT * (PHOTO_COUNT - 1)
    assert [m.name for m in report.methods] == ["pdq", "pdq+dihedral"]
    by_name = {m.name: m for m in report.methods}
    assert by_name["pdq"].default_threshold == 31 and by_name["pdq"].algorithm == "pdq"
    # rotate_90 is half the copies: plain PDQ misses it, the dihedral variants find it
    assert by_name["pdq"].recall_at_default == pytest.approx(0.5)
    assert by_name["pdq+dihedral"].recall_at_default == 1.0
    assert {g.name for g in report.groups} and all(
        set(g.recall_at_default) == {"pdq", "pdq+dihedral"} for g in report.groups)
    assert report.markdown.startswith("# Detection quality")
    assert {p.name for p in report.plots} == {"recall_vs_fpr.png", "recall_by_group.png",
                                              "recall_by_transform.png"}
    assert all(p.png.startswith(b"\x89PNG") for p in report.plots)
    assert not list(server.home.glob("evaluation.*-*"))  # the staging folder was swapped in
    answer = http(f"http://127.0.0.1:{server.http_port}", "GET", "/v1/evaluation-report",
                  key=server.keys["admin"])
    assert answer.status == 200 and answer.json()["originals"] == str(PHOTO_COUNT)
    with Client(server.target, api_key=server.keys["scanner"]) as scanner, \
            pytest.raises(PermissionDenied):
        scanner.evaluation_report()


def test_a_damaged_report_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    (home / "evaluation").mkdir()
    (home / "evaluation" / "results.json").write_text(json.dumps({"created_at": "x"}))
    with ServerProcess(home) as server, _admin(server) as admin, \
            pytest.raises(ServerError) as refused:
        admin.evaluation_report()
    assert refused.value.code == grpc.StatusCode.DATA_LOSS
    assert "results.json cannot be read (KeyError" in str(refused.value)


def test_evaluate_takes_out_or_to_home_not_both(tmp_path: Path) -> None:
    home = DataHome(tmp_path / "home")
    result = run_indexer(home, "evaluate", str(tmp_path), "--to-home", "--out", str(tmp_path))
    assert result.returncode != 0 and "give --out or --to-home, not both" in result.stderr
