"""Names on disk: where a part file lives while it is written and where a crash's leftovers go,
the session tag in file names, and which directory names are allowed.

Layout (one sink per stripe; see docs/sink.md)::

    ROOT/<MsgType>/date=YYYY-MM-DD/stripe=<S>/part-<UTC start>-<session tag>-<counter>.parquet
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

#: In-progress files are ``"." + <final name> + INPROGRESS_SUFFIX``.
INPROGRESS_SUFFIX: Final = ".inprogress"
#: Directory under ROOT where cleanup_in_progress() moves files left behind by a crash.
#: The leading underscore makes pyarrow.dataset, Spark and Hive discovery skip it.
QUARANTINE_DIR: Final = "_quarantine"

_PATH_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_SESSION_TAG = re.compile(r"[A-Za-z0-9]{1,12}")
_TS_FORMAT: Final = "%Y%m%dT%H%M%SZ"


def _inprogress_name(final_name: str) -> str:
    return "." + final_name + INPROGRESS_SUFFIX


def _is_inprogress_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(INPROGRESS_SUFFIX)


def _session_tag(session: str) -> str:
    """Short, filename-safe token unique per session.

    Short alphanumeric sessions are used verbatim (readable); anything else (UUIDs, ULIDs,
    arbitrary text) is hashed, because a prefix of a time-ordered id is not unique.  The full
    session is in the footer (``mlink.session``).
    """
    if not session:
        raise ValueError("session must be a non-empty string")
    if _SESSION_TAG.fullmatch(session):
        return session
    return hashlib.blake2b(session.encode(), digest_size=6).hexdigest()


def _check_component(kind: str, value: str) -> None:
    # No separators, no leading "." or "_" (readers would silently skip the directory), no "="
    # (hive would parse it as a key).
    if not _PATH_COMPONENT.fullmatch(value):
        raise ValueError(
            f"{kind} {value!r} is not usable as a directory name "
            "(allowed: letters, digits and _ . + -, starting with a letter or digit)"
        )
