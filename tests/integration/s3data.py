"""Test data in the stack's S3: buckets made with objects, and what a bucket holds."""

from __future__ import annotations

import uuid


def make_bucket(s3, prefix: str, objects: dict[str, bytes]) -> str:
    """A new bucket ``<prefix>-<random>`` holding ``objects``."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    for key, body in objects.items():
        s3.put_object(Bucket=name, Key=key, Body=body)
    return name


def bucket_keys(s3, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix`` with its bytes; empty when the bucket does not exist."""
    out: dict[str, bytes] = {}
    if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        return out
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out
