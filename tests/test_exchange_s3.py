"""The `url` exchange with an s3:// list, against moto's S3 server on 127.0.0.1
(tests/s3_server.py): read again at every sync, and a missing object, a missing bucket or
refused credentials give a clear message and apply nothing."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import moto.settings
import pytest

from hashsvc.errors import HashsvcError
from hashsvc.home import DataHome
from hashsvc.store import EntryQuery, Store
from indexer.exchanges import EXCHANGES
from indexer.exchanges.sync import sync_bank
from tests.conftest import run_indexer
from tests.s3_server import SECRET, new_bucket


def _md5(n: int) -> str:
    return n.to_bytes(16, "big").hex()


def _put_list(endpoint: str, bucket: str, numbers: range | list[int], keys: str = "") -> None:
    body = "algorithm,hash,external_id\n" + "".join(f"md5,{_md5(n)},item-{n}\n"
                                                     for n in numbers)
    key_id, _, secret = keys.partition(":")
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key_id or None,
                          aws_secret_access_key=secret or None)
    client.put_object(Bucket=bucket, Key="lists/tat.csv", Body=body.encode())


def _hashes(store: Store) -> list[str]:
    page = store.list_entries(EntryQuery(banks=("tat",), limit=1000))
    return sorted(entry.hash.hex() for entry in page.entries)


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    return new_bucket(s3_endpoint)


@pytest.fixture
def checked_credentials(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A key moto's IAM knows and allows to read S3, as ACCESS_KEY_ID:SECRET; while the test
    runs, moto (in this process: ThreadedMotoServer) refuses any other."""
    iam = boto3.client("iam", endpoint_url=s3_endpoint)
    name = f"reader-{new_bucket(s3_endpoint)}"
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    return f"{key['AccessKeyId']}:{key['SecretAccessKey']}"


def test_an_s3_list_is_read_again_at_every_sync(
    store: Store, s3_endpoint: str, bucket: str
) -> None:
    _put_list(s3_endpoint, bucket, range(6))
    store.create_bank("tat")
    store.bind_exchange("tat", "url", {"source": f"s3://{bucket}/lists/tat.csv",
                                       "s3_endpoint_url": s3_endpoint, "page_size": 4})
    first = sync_bank(store, "tat")
    assert (first.pages, first.totals.added) == (2, 6)
    _put_list(s3_endpoint, bucket, [*range(2, 6), 50])
    changed = sync_bank(store, "tat")
    assert (changed.totals.added, changed.totals.deleted) == (1, 2)
    assert _hashes(store) == sorted(_md5(n) for n in [*range(2, 6), 50])
    checkpoint = store.exchange_bindings("tat")[0].checkpoint

    for source, problem in ((f"s3://{bucket}/lists/gone.csv", "does not exist"),
                            (f"s3://no-such-{bucket}/lists/tat.csv", "bucket .* does not exist")):
        store.bind_exchange("tat", "url", {"source": source, "s3_endpoint_url": s3_endpoint})
        with pytest.raises(HashsvcError, match=f"{problem}.*nothing applied"):
            sync_bank(store, "tat")
        assert _hashes(store) == sorted(_md5(n) for n in [*range(2, 6), 50])
    assert store.exchange_bindings("tat")[0].checkpoint in (checkpoint, None)
    with pytest.raises(HashsvcError, match="is not s3://bucket/key"):
        EXCHANGES["url"]({"source": f"s3://{bucket}"}, None)  # refused when bound


def test_cli_syncs_an_s3_list_with_the_banks_own_keys(
    home: DataHome, s3_endpoint: str, bucket: str, checked_credentials: str,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _put_list(s3_endpoint, bucket, range(3), checked_credentials)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN000000000")  # what the CLI inherits
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    run_indexer(home, "bank", "create", "tat", check=True)
    keys = tmp_path / "s3-keys"
    keys.write_text("AKIAWRONGWRONGWRONG0:not-the-secret-either\n")
    run_indexer(home, "exchange", "bind", "tat", "--type", "url", "--source",
                f"s3://{bucket}/lists/tat.csv", "--s3-endpoint-url", s3_endpoint,
                "--credentials-file", str(keys), check=True)
    refused = run_indexer(home, "exchange", "sync", "tat")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "refused (InvalidAccessKeyId" in refused.stderr
    assert "check the credentials" in refused.stderr
    assert "not-the-secret" not in refused.stderr + refused.stdout

    keys.write_text(checked_credentials + "\n")
    synced = run_indexer(home, "exchange", "sync", "tat", check=True)
    assert json.loads(synced.stdout)["added"] == 3
    secret = checked_credentials.split(":")[1]
    assert secret not in synced.stdout + synced.stderr
    assert secret.encode() not in home.store_path.read_bytes()

    keys.write_text("no-colon\n")
    malformed = run_indexer(home, "exchange", "sync", "tat")
    assert "must be ACCESS_KEY_ID:SECRET_ACCESS_KEY" in malformed.stderr
