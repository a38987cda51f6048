"""Sizes, intervals and limits of the sync engine, and the object metadata names.

The knobs of :mod:`activities.storage.sync` in one place: what counts as a large
file, how often progress is reported and manifests are saved, how pulls batch
their durability work, how many requests are in flight, and the names of the
temporary files, the preserved area and the ``x-amz-meta-*`` keys the object layout
uses.
"""

from __future__ import annotations

import os
import re

MiB = 1024 * 1024

#: Files at least this large are "large": progress is reported while they
#: move, and a pull starts their writeback to disk while they download.  (The
#: CRT uses multipart/ranged transfers above its part size, 8 MiB.)
MULTIPART_THRESHOLD = 32 * MiB
#: Files up to this size are read into memory before upload (consistent
#: snapshot, Content-MD5 integrity check); larger ones are streamed by the CRT
#: from the already opened file (``/proc/self/fd/N``, never a path that could
#: have become a symlink).
IN_MEMORY_UPLOAD_LIMIT = 1 * MiB

META_MODE = "mode"
META_MTIME = "mtime"
META_SYMLINK = "symlink"
DIRECTORY_CONTENT_TYPE = "application/x-directory"

_IO_CHUNK = 1 * MiB
_PROGRESS_INTERVAL = 0.5
_STOP_POLL_INTERVAL = 0.05
_MANIFEST_SAVE_SECONDS = 1.5
# A pull makes finished files durable and renames them into place in batches.
_FLUSH_FILES = 2000
# Up to this many files (or directories, for renames) are fsynced one by one; more
# take one syncfs, which also flushes whatever else is dirty on the file system.
_FSYNC_EACH_MAX = 32
_FLUSH_BYTES = 256 * MiB
_FLUSH_SECONDS = 0.5
# In-flight CRT requests per sync (per ``workers``, bounded).
_INFLIGHT_PER_WORKER = 8
_MAX_INFLIGHT = 256
_PROC_FD = "/proc/self/fd"
_HAVE_PROC_FD = os.path.isdir(_PROC_FD)
_MANIFEST_VERSION = 1
_DELETE_BATCH = 1000
_STREAM_ATTEMPTS = 3
_CHANGE_ATTEMPTS = 3
_MAX_KEY_BYTES = 1024

_TMP_PREFIX = ".ainb-tmp-"
_TMP_RE = re.compile(r"^\.ainb-tmp-[0-9a-f]{16}$")

#: Under the prefix: where a push keeps the stored version of an object it replaces
#: when both sides changed it since the last sync (``<run>/<relative key>``).
PRESERVED_AREA = ".ainb-preserved"
#: Larger objects cannot be copied by one CopyObject: a multipart copy is used.
_MAX_COPY_BYTES = 5 * 1024 * MiB
