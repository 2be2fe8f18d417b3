"""A `url` exchange's hash list at `s3://bucket/key`: read whole from an S3-compatible bucket
(AWS S3, MinIO, Ceph RGW) with boto3, the client the snapshot repository already uses.

Why whole or not at all: the list says what exists, so a short read would delete the rest of
the bank. botocore checks the body against its Content-Length and retries throttling, 5xx and
dropped connections itself (a bounded number of times); every failure becomes one line naming
the bucket and key and what to check, never a credential.

Credentials: the binding's reference (`--credentials-env` / `--credentials-file`) holding
`ACCESS_KEY_ID:SECRET_ACCESS_KEY` when a bank's bucket needs its own; otherwise boto3's
standard chain (environment, shared config, instance role), like the snapshot repository.
The endpoint: the binding's `s3_endpoint_url`, else $HASHSVC_S3_ENDPOINT_URL, else boto3's own
default ($AWS_ENDPOINT_URL, else AWS).
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any

from hashsvc.errors import HashsvcError
from hashsvc.store.base import redact
from hashsvc.store.exchange_model import Credentials

_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_REFUSED = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
                      "InvalidToken", "ExpiredToken"})


def s3_location(source: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URL, checked when the bank is bound."""
    url = urllib.parse.urlsplit(source)
    bucket, key = url.netloc, url.path.lstrip("/")
    if not bucket or not key or "@" in bucket or url.query:
        raise HashsvcError(f"url exchange: {redact(source)[:200]!r} is not s3://bucket/key")
    return bucket, key


def read_s3_list(source: str, endpoint_url: str | None,
                 credentials: Credentials | None) -> bytes:
    """The object's bytes, whole, or a `HashsvcError` saying what is wrong."""
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
        import urllib3.exceptions
    except ImportError:  # pragma: no cover - the `s3` extra is not installed
        raise HashsvcError(f"url exchange: {redact(source)} needs boto3 "
                           "(pip install 'hashsvc[s3]')") from None
    bucket, key = s3_location(source)
    keys: dict[str, Any] = {}
    if credentials is not None:
        from indexer.exchanges import read_secret

        access_key, sep, secret_key = read_secret(credentials).partition(":")
        if not sep or not access_key or not secret_key:
            raise HashsvcError(f"url exchange: credentials ({credentials.source} "
                               f"{credentials.name}) for s3:// must be "
                               "ACCESS_KEY_ID:SECRET_ACCESS_KEY")
        keys = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
    endpoint = endpoint_url or os.environ.get("HASHSVC_S3_ENDPOINT_URL") or None
    where = f"url exchange: s3://{bucket}/{key}"
    try:
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, **keys,
            config=botocore.config.Config(connect_timeout=10, read_timeout=60,
                                          retries={"max_attempts": 4, "mode": "standard"}))
        body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body
    except botocore.exceptions.ClientError as err:
        error = err.response.get("Error", {})
        code = str(error.get("Code", "?"))
        detail = f"{code}: {error.get('Message', '')}".strip()
        if code in _MISSING:
            raise HashsvcError(f"{where} does not exist ({detail}); nothing applied") from None
        if code == "NoSuchBucket":
            raise HashsvcError(f"{where}: the bucket {bucket!r} does not exist; nothing applied"
                               ) from None
        hint = ("; check the credentials (the binding's, else the AWS environment)"
                if code in _REFUSED else "")
        raise HashsvcError(f"{where}: refused ({redact(detail)[:200]}){hint}; nothing applied"
                           ) from None
    except botocore.exceptions.NoCredentialsError:
        raise HashsvcError(f"{where}: no AWS credentials found (name them with "
                           "--credentials-env or --credentials-file, or set the AWS "
                           "environment); nothing applied") from None
    except (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, ValueError) as err:
        raise HashsvcError(f"{where}: cannot fetch ({type(err).__name__}: "
                           f"{redact(str(err))[:200]}); nothing applied, the next sync "
                           "resumes") from None
