"""What host activities count, in this process's Prometheus registry (served by
worker/metrics.py)."""

from prometheus_client import Counter

SYNC_BYTES = Counter("ainb_sync_bytes", "bytes transferred by data syncs", ["direction"])
SYNC_FILES = Counter("ainb_sync_files", "files transferred by data syncs", ["direction"])
