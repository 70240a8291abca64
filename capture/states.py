"""The states a stripe and a stripe-group process can be in, named once.

Their values are the operators' contract: the health file's ``state`` fields, ``status`` and the
``mlink_capture_stripe_state`` metric show exactly these strings (README, Health).  ``StrEnum``:
a member is its string (it compares, formats and serialises as the value).
"""

from __future__ import annotations

from enum import StrEnum


class StripeState(StrEnum):
    STARTING = "starting"  # before its first connection attempt
    CONNECTING = "connecting"  # connecting, or connected with no data or heartbeat yet
    STREAMING = "streaming"  # data or heartbeats arrive
    QUIET = "quiet"  # connected, heartbeats only for health.quiet_after (health's view)
    STALE = "stale"  # neither data nor heartbeat for supervision.stale_after (health's view)
    BACKOFF = "backoff"  # waiting to reconnect, or to restart after a failure
    AUTH_FAILED = "auth_failed"  # credentials refused or unusable: the long auth backoff
    PAUSED = "paused"  # the lake's local disk budget is reached: disconnected until it has room
    FAILED = "failed"  # failed too often: given up
    STOPPING = "stopping"  # closing its stream, committing its files
    STOPPED = "stopped"
    UNRESPONSIVE = "unresponsive"  # its stripe-group process stopped reporting


# A stripe in one of these states is healthy.
OK_STATES = frozenset({StripeState.STREAMING, StripeState.QUIET})


class GroupState(StrEnum):
    """A stripe-group process's (capture.groups; ``process.processes[].state``)."""

    STARTING = "starting"  # started, no report yet
    RUNNING = "running"  # reporting
    BACKOFF = "backoff"  # died; waiting to restart
    FAILED = "failed"  # stays down
    STOPPED = "stopped"
