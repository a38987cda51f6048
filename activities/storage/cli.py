"""Command line front end of :mod:`activities.storage.sync` (used by ``bench/``).

::

    python -m activities.storage.cli push LOCAL_DIR s3://bucket/prefix [--delete]
    python -m activities.storage.cli pull s3://bucket/prefix LOCAL_DIR [--delete]
        [--endpoint URL] [--region R] [--workers N] [--seed-from DIR]

Credentials come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and
``AWS_SESSION_TOKEN``), the endpoint from ``--endpoint`` or
``AWS_ENDPOINT_URL``.  Prints one summary line; exits 1 on a storage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from activities.storage import sync
from activities.storage.errors import StorageError
from activities.storage.sync.common import _avoid_empty_expect_continue


def _split_s3(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise SystemExit(f"not an S3 URL (s3://bucket/prefix): {url}")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise SystemExit(f"no bucket in {url}")
    return bucket, prefix


class _LazyClient:
    """A botocore S3 client created on first use.

    Object data, listings and the no-op path go through the CRT engine, which
    only needs the settings (``crt_settings``); building a botocore client
    costs ~0.3 s of start-up, paid only if a HEAD/DELETE is actually needed.
    """

    def __init__(self, endpoint: str | None, region: str, workers: int) -> None:
        self._args = (endpoint, region, workers)
        self._real: Any = None
        self.meta = SimpleNamespace(
            endpoint_url=endpoint or f"https://s3.{region}.amazonaws.com",
            region_name=region,
            config=SimpleNamespace(max_pool_connections=workers + 4),
            events=None,
        )
        self.crt_settings = {
            "endpoint": self.meta.endpoint_url,
            "region": region,
            "access_key": os.environ.get("AWS_ACCESS_KEY_ID"),
            "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
            "token": os.environ.get("AWS_SESSION_TOKEN"),
            "verify": True,
            "connect_timeout_ms": 5000,
            "max_retries": 4,
        }

    def __getattr__(self, name: str) -> Any:
        if self._real is None:
            self._real = _client(*self._args)
            _avoid_empty_expect_continue(self._real)
        return getattr(self._real, name)


def _client(endpoint: str | None, region: str | None, workers: int):
    import botocore.config
    import botocore.session

    # botocore directly: same client class as boto3's, without importing boto3/s3transfer
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or os.environ.get("AWS_REGION") or "us-east-1",
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=os.environ.get("AWS_SESSION_TOKEN"),
        config=botocore.config.Config(
            max_pool_connections=workers + 4,
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"},
        ),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m activities.storage.cli", description=__doc__)
    ap.add_argument("direction", choices=["push", "pull"])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--delete", action="store_true", help="delete what the source does not have")
    ap.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"))
    ap.add_argument("--region", default=None)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--seed-from", type=Path, default=None, help="pull only: local seed copy")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    region = args.region or os.environ.get("AWS_REGION") or "us-east-1"
    s3 = _LazyClient(args.endpoint, region, args.workers)
    t0 = time.monotonic()
    try:
        if args.direction == "push":
            bucket, prefix = _split_s3(args.dst)
            stats = sync.push(
                s3, Path(args.src), bucket, prefix, delete=args.delete, workers=args.workers
            )
        else:
            bucket, prefix = _split_s3(args.src)
            stats = sync.pull(
                s3,
                bucket,
                prefix,
                Path(args.dst),
                delete=args.delete,
                workers=args.workers,
                seed_from=args.seed_from,
            )
    except StorageError as exc:
        print(f"{args.direction} failed: {exc}", file=sys.stderr)
        return 1
    took = time.monotonic() - t0
    print(
        f"{args.direction}: {stats.files_done} files / {stats.bytes_done} bytes transferred "
        f"({stats.files_seeded} seeded), {stats.files_skipped} skipped, "
        f"{stats.files_deleted} deleted, {stats.files_total} total, {took:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
