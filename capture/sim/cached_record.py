"""One cached record of the simulated market: the latest version of one pkey of one type."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from capture.schemas import MessageDef
from capture.sim.encoding import encode_message

__all__ = ["Record"]


@dataclass(eq=False, slots=True)
class Record:
    """One cached record: the latest version of one pkey of one message type.

    Treat as immutable once published: subscriptions and the snapshot hold references.
    """

    mdef: MessageDef
    pkey: tuple[Hashable, ...]
    values: Mapping[str, Any]
    stripes: frozenset[str]
    sent_ns: int
    """Header ``sTim`` in ns, truncated to the microsecond the header shows."""
    sid: int
    seqn: int
    _message: str | None = None

    @property
    def msg_type(self) -> str:
        return self.mdef.name

    def message_json(self) -> str:
        """The encoded ``message`` object (computed once, shared by every connection)."""
        if self._message is None:
            self._message = encode_message(self.mdef, self.values)
        return self._message
