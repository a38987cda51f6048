"""S3 clients per storage alias, built from worker configuration (never workflow input)."""

from __future__ import annotations

import threading

import boto3
import botocore.config

from domain.config import Settings, StorageAlias


def make_client(alias: StorageAlias, *, max_pool: int = 32, attempts: int = 3):
    return boto3.session.Session().client(
        "s3",
        endpoint_url=alias.endpoint,
        region_name=alias.region,
        aws_access_key_id=alias.access_key.get_secret_value(),
        aws_secret_access_key=alias.secret_key.get_secret_value(),
        config=botocore.config.Config(
            max_pool_connections=max_pool,
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"},
        ),
    )


class S3Clients:
    """One client per alias, shared by the activity threads (boto3 clients are thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, alias: str):
        with self._lock:
            if alias not in self._clients:
                self._clients[alias] = make_client(self._settings.storage(alias))
            return self._clients[alias]

    def platform(self):
        return self.get(self._settings.platform_alias)


def ensure_bucket(s3, bucket: str) -> None:
    """Create the bucket unless it exists; safe to call from several workers at once."""
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except s3.exceptions.ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    try:
        s3.create_bucket(Bucket=bucket)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
