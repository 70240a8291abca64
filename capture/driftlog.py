"""What a stripe tells the operator about data that does not match the data dictionary.

The writer reports each batch it wrote (:class:`capture.batchwrite.WriteOutcome`); a
:class:`DriftLog` turns the parts that concern the dictionary into counters and log lines:

* a message type the dictionary does not know (its rows go to a generic table): logged once per
  type, at most :data:`UNKNOWN_TYPES_LOGGED` types, with what to do about it;
* fields not in the dictionary (kept in ``_extra``): logged once per field and type, at most
  :data:`DRIFT_FIELDS_MAX` names per type;
* frame type numbers that differ from the dictionary's (numbers are hints, PROTOCOL.md §4.1):
  logged once per stripe, counted always;
* bodies that are not a JSON object: quarantined by the writer, counted and logged here.

Whatever a server invents, neither the log nor memory grows without bound.
"""

from __future__ import annotations

from typing import Any

from capture.batchwrite import WriteOutcome
from capture.schemas import lookup as lookup_message
from capture.stats import StripeStats

__all__ = ["DRIFT_FIELDS_MAX", "UNKNOWN_TYPES_LOGGED", "DriftLog"]

UNKNOWN_TYPES_LOGGED = 20
"""Distinct unknown message types a stripe logs."""

DRIFT_FIELDS_MAX = 256
"""Unknown field names remembered (and logged) per type: a server inventing a new name in every
message must not grow memory or the log without bound (the values are in _extra anyway)."""


class DriftLog:
    """One stripe's notes on data the dictionary does not describe."""

    def __init__(self, log: Any, stats: StripeStats) -> None:
        self.log = log
        self.stats = stats
        self.unknown_types: set[str] = set()  # logged once each, at most UNKNOWN_TYPES_LOGGED
        self._unknown_fields: dict[str, set[str]] = {}

    def written(self, msg_type: str, outcome: WriteOutcome) -> None:
        """Count and log what one written batch of ``msg_type`` showed."""
        stats = self.stats
        if msg_type not in self.unknown_types and lookup_message(msg_type) is None:
            self.unknown_type(msg_type)
        stats.quarantined += outcome.rejected
        if outcome.rejected:
            self.log.warning(
                "quarantined bytes",
                msg_type=msg_type,
                frames=outcome.rejected,
                reason="data frame body is not a JSON object",
            )
        stats.drift_rows += outcome.slow_rows
        if outcome.number_mismatches:
            if not stats.type_number_mismatches:  # numbers are hints (PROTOCOL.md §4.1): note once
                expected = lookup_message(msg_type)
                self.log.warning(
                    "frame type numbers differ from the dictionary's; dispatching on mTyp",
                    msg_type=msg_type,
                    expected=expected.number if expected else None,
                )
            stats.type_number_mismatches += outcome.number_mismatches
        if outcome.unknown_fields:
            seen = self._unknown_fields.setdefault(msg_type, set())
            new = outcome.unknown_fields - seen
            if new and len(seen) < DRIFT_FIELDS_MAX:  # once per field per type: drift is news
                seen |= new
                self.log.warning(
                    "schema drift: fields not in the dictionary kept in _extra",
                    msg_type=msg_type,
                    fields=sorted(new)[:DRIFT_FIELDS_MAX],
                    complete=len(seen) < DRIFT_FIELDS_MAX,  # false: later new fields unlisted
                )

    def unknown_type(self, msg_type: str) -> None:
        """Log a message type the data dictionary does not know, once per stripe, with what to
        do about it; a server naming ever new types fills neither the log nor memory."""
        if len(self.unknown_types) > UNKNOWN_TYPES_LOGGED:
            return
        self.unknown_types.add(msg_type)
        if len(self.unknown_types) > UNKNOWN_TYPES_LOGGED:
            self.log.warning(
                "more message types not in the data dictionary; not logging them any more",
                logged=UNKNOWN_TYPES_LOGGED,
            )
            return
        self.log.warning(
            "message type not in the data dictionary: its rows go to a generic table",
            msg_type=msg_type,
            hint=(
                "nothing is lost: the table holds the header columns and the message as JSON "
                "(column `message`); a newer data dictionary (tools/gen_schemas.py) gives it "
                "typed columns. A misspelled or retired type name on the server's side also "
                "shows up here"
            ),
        )
