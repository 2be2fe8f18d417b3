"""Bad input to the console: each refusal is a page with the precise HTTP status and a message
naming what was wrong, nothing is stored half-way, and no trace reaches the browser."""

from __future__ import annotations

import csv
import http.client
import io
import re
import socket
import time
from collections.abc import Iterator

import pytest
from hashsvc_client import Client

from tests.console_client import ConsoleClient
from tests.http_client import HttpAnswer
from tests.server_process import ServerProcess
from tests.test_observability import _samples, _value

BANK = "inputs"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("console-input")) as process, \
            Client(process.target, api_key=process.keys["admin"]) as admin:
        admin.create_bank(BANK)
        admin.add_entries(BANK, [(("md5", f"{n:032x}"), f"kept-{n}", None) for n in range(3)])
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> ConsoleClient:
    signed_in = ConsoleClient(f"http://127.0.0.1:{server.http_port}")
    assert signed_in.sign_in(server.keys["admin"]).status == 303
    return signed_in


def _refusal(answer: HttpAnswer) -> tuple[int, str]:
    text = answer.body.decode()
    assert "Traceback" not in text and "text/html" in answer.headers["content-type"]
    match = re.search(r'role="alert">([^<]*)<', text)
    assert match, text[:300]
    return answer.status, match.group(1).replace("&#39;", "'")


def _entry_count(server: ServerProcess) -> int:
    with Client(server.target, api_key=server.keys["admin"]) as admin:
        return next(b.entry_count for b in admin.list_banks() if b.name == BANK)


@pytest.mark.parametrize("key", ["\u00e4-not-ascii", "tab\tinside", "x" * 300])
def test_a_key_no_server_could_have_is_refused_as_unknown(server: ServerProcess,
                                                          key: str) -> None:
    client = ConsoleClient(f"http://127.0.0.1:{server.http_port}")
    assert _refusal(client.sign_in(key)) == (401, "This key is not known to the server.")


@pytest.mark.parametrize(("name", "content", "options", "status", "message"), [
    ("list.txt", b"0" * 32 + b"\n", {}, 422,
     "list.txt: a plain-text list has no algorithm column; choose the algorithm."),
    ("list.bin", b"0" * 32 + b"\n", {"algorithm": "md5"}, 422,
     "list.bin: cannot tell the format from the extension '.bin': choose the format."),
    ("list.csv", b"hash,algorithm\n" + b"1" * 32 + b",md5\nzz,md5\n" + b"2" * 32 + b",sha1\n",
     {}, 422, "Nothing was imported: 2 line(s) of list.csv are not valid: list.csv:3: invalid "
     "md5 hash 'zz': expected 32 hex digits, got 2; list.csv:4: unknown algorithm 'sha1'"),
    ("list.txt", b"\xff" + b"3" * 31 + b"\n", {"algorithm": "md5"}, 422,
     "Nothing was imported: 1 line(s) of list.txt are not valid: list.txt:1: not valid UTF-8"),
    ("empty.csv", b"\n\n", {}, 422, "empty.csv is empty: there is nothing to import."),
    ("list.csv", b"a,b\n1,2\n", {"columns": "nonsense"}, 422,
     "invalid column map item 'nonsense'"),
])
def test_a_bad_hash_list_names_what_is_wrong_and_imports_nothing(
        server: ServerProcess, client: ConsoleClient, name: str, content: bytes,
        options: dict[str, str], status: int, message: str) -> None:
    fields = {"csrf_token": client.token(f"/console/banks/{BANK}"), **options}
    answer = client.post_multipart(f"/console/banks/{BANK}/import", fields,
                                   {"list": (name, content)})
    got_status, got_message = _refusal(answer)
    assert got_status == status and got_message.startswith(message), got_message
    assert _entry_count(server) == 3


def test_an_import_without_a_file_is_a_400(client: ConsoleClient) -> None:
    fields = {"csrf_token": client.token(f"/console/banks/{BANK}")}
    answer = client.post_multipart(f"/console/banks/{BANK}/import", fields, {})
    assert _refusal(answer) == (400, "Choose a hash list file to import.")


def test_an_upload_over_the_limit_is_refused_before_it_is_read(
        server: ServerProcess, client: ConsoleClient) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    connection.putrequest("POST", f"/console/banks/{BANK}/import")
    connection.putheader("Cookie", "; ".join(f"{k}={v}" for k, v in client.cookies.items()))
    connection.putheader("Content-Type", "multipart/form-data; boundary=b")
    connection.putheader("Content-Length", str(200 << 20))  # declared, never sent
    connection.endheaders()
    connection.send(b"--b\r\n")
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    assert response.status == 413 and "the upload is over 67,108,864 bytes" in body
    assert _entry_count(server) == 3


def test_a_post_that_is_not_a_form_is_a_415(client: ConsoleClient) -> None:
    answer = client._send("POST", "/console/banks", b'{"name": "x"}', "application/json", None)
    status, message = _refusal(answer)
    assert status == 415 and "not application/json" in message


@pytest.mark.parametrize(("path", "status", "message"), [
    ("/console/entries/abc", 404, "There is no entry with id 'abc': an entry id is a number."),
    ("/console/entries/%C2%B2", 404,
     "There is no entry with id '\u00b2': an entry id is a number."),
    ("/console/entries/987654", 404, "No entry with id 987654"),
    ("/console/banks/%3Cscript%3E", 404, "There is no bank named '&lt;script&gt;'."),
    ("/console/entries?by=hash&q=zz&algorithm=md5", 422,
     "Hash: invalid md5 hash 'zz': expected 32 hex digits, got 2"),
    ("/console/entries?bank=nope&q=x", 404, "No bank named 'nope'"),
    ("/console/entries/export?format=xml", 422, "Unknown export format: one of csv, import."),
])
def test_a_bad_lookup_is_a_page_with_its_status(client: ConsoleClient, path: str, status: int,
                                                message: str) -> None:
    assert _refusal(client.get(path)) == (status, message)


@pytest.mark.parametrize(("fields", "message"), [
    ({"threshold_pdq": "-1"}, "The pdq threshold must be a whole number of bits, or blank for "
                              "the default (got '-1')."),
    ({"threshold_pdq": "999"}, "Invalid pdq threshold 999: must be 0..256"),
    ({"variant_margin": "x"}, "The variant margin must be a whole number of bits."),
    ({"crop_variants": "5, ten"}, "Crop variants must be whole numbers separated by commas."),
    # Digits `str.isdigit` accepts and `int` refuses, and numbers no int32 holds: were 500s.
    ({"threshold_pdq": "\u00b2"}, "The pdq threshold must be a whole number of bits, or blank "
                                  "for the default (got '\u00b2')."),
    ({"threshold_pdq": "99999999999"}, "The pdq threshold must be a whole number of bits, or "
                                       "blank for the default (got '99999999999')."),
    ({"variant_margin": "9" * 5000}, "The variant margin must be a whole number of bits."),
    ({"corner_crops": "5, \u00b2"}, "Corner crops must be whole numbers separated by commas."),
])
def test_bad_bank_settings_change_nothing(server: ServerProcess, client: ConsoleClient,
                                          fields: dict[str, str], message: str) -> None:
    form = {"csrf_token": client.token(f"/console/banks/{BANK}"), "dihedral": "on",
            "description": "changed", **fields}
    assert _refusal(client.post(f"/console/banks/{BANK}/settings", form)) == (422, message)
    with Client(server.target, api_key=server.keys["admin"]) as admin:
        bank = next(b for b in admin.list_banks() if b.name == BANK)
    assert bank.description == "" and not bank.thresholds
    assert "Traceback" not in server.log


def test_a_crafted_kind_enabled_or_disabled_value_is_refused_not_taken_for_a_default(
        server: ServerProcess, client: ConsoleClient) -> None:
    token = client.token("/console/banks")
    created = client.post("/console/banks", {"csrf_token": token, "name": "odd-kind",
                                             "kind": "blocklist"})
    assert _refusal(created) == (422, "Unknown bank kind 'blocklist': one of match, allowlist.")
    switched = client.post(f"/console/banks/{BANK}/enabled", {"csrf_token": token,
                                                               "enabled": "maybe"})
    assert _refusal(switched) == (422, "Say whether to enable the bank: enabled=true or "
                                       "enabled=false.")
    with Client(server.target, api_key=server.keys["admin"]) as admin:
        banks = {b.name: b for b in admin.list_banks()}
        [entry] = admin.list_entries(banks=[BANK], external_id="kept-0").entries
    assert "odd-kind" not in banks and banks[BANK].enabled
    flipped = client.post(f"/console/entries/{entry.id}/disabled", {
        "csrf_token": token, "disabled": "yes", "reason": "crafted"})
    assert _refusal(flipped) == (422, "Say whether to disable the entry: disabled=true or "
                                      "disabled=false.")
    assert _entry_count(server) == 3


@pytest.mark.parametrize("entry_id", ["\u00b2", "9" * 30])
def test_a_verdict_on_an_entry_id_that_is_no_number_is_refused_not_a_500(
        server: ServerProcess, client: ConsoleClient, entry_id: str) -> None:
    form = {"csrf_token": client.token("/console/matches"), "entry_id": entry_id,
            "verdict": "confirmed"}
    assert _refusal(client.post("/console/matches/feedback", form)) == (
        422, "Name the entry: entry_id (a match's entry_id), or bank and hash")
    assert "Traceback" not in server.log


@pytest.mark.parametrize(("content_type", "start"), [
    ("application/x-www-form-urlencoded", "key=abc"),
    ("multipart/form-data; boundary=cut-short",
     '--cut-short\r\nContent-Disposition: form-data; name="key"\r\n\r\nabc'),
])
def test_a_form_cut_short_by_its_browser_is_counted_not_logged_with_a_trace(
        server: ServerProcess, content_type: str, start: str) -> None:
    """A browser that goes away mid-upload (closed tab, lost network) is an everyday event, as
    for the API: counted as `disconnected`, and no "Traceback" in the log."""
    def disconnected() -> float:
        return _value(_samples(server.scrape()), "hashsvc_http_refused_total",
                      reason="disconnected")

    before = disconnected()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=60) as connection:
        connection.sendall(f"POST /console/signin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Content-Type: {content_type}\r\nContent-Length: 1000\r\n\r\n"
                           f"{start}".encode())
    deadline = time.monotonic() + 60  # a hang guard: the server sees the close at once
    while disconnected() == before:
        assert time.monotonic() < deadline, "the cut-short form was never counted"
        time.sleep(0.05)
    assert "Traceback" not in server.log


def test_a_spreadsheet_export_never_holds_a_formula_and_the_import_export_is_exact(
        server: ServerProcess, client: ConsoleClient) -> None:
    """An external id from an exchange such as '=HYPERLINK(...)' would run in a spreadsheet."""
    formula = '=HYPERLINK("http://example.invalid/","open")'
    with Client(server.target, api_key=server.keys["admin"]) as admin:
        admin.create_bank("formulas")
        admin.add_entries("formulas", [(("md5", "f" * 32), formula, None),
                                       (("md5", "e" * 32), "@SUM(A1)", None),
                                       (("md5", "d" * 32), "plain-id", None)])
    export = "/console/entries/export?bank=formulas&q=&format="
    sheet = client.get(export + "csv")
    assert sheet.status == 200
    shown = {row["external_id"] for row in csv.DictReader(io.StringIO(sheet.body.decode()))}
    assert shown == {"'" + formula, "'@SUM(A1)", "plain-id"}
    exact = client.get(export + "import")
    kept = {row["external_id"] for row in csv.DictReader(io.StringIO(exact.body.decode()))}
    assert kept == {formula, "@SUM(A1)", "plain-id"}
