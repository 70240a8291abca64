"""sd_notify (capture.sdnotify) against a real datagram socket that does not read."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from capture.sdnotify import Notifier


def test_a_receiver_that_does_not_read_never_blocks_the_sender(tmp_path: Path) -> None:
    """The notifier runs on the event loop: when the receiver's queue is full (10 datagrams by
    default), messages are dropped, not waited for."""
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    try:  # the receiver's queue: this many datagrams (10 by default; systemd hosts raise it)
        queue = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    except (OSError, ValueError):
        queue = 10
    count = queue + 100
    sent: list[bool] = []
    sender = threading.Thread(
        target=lambda: sent.extend(notifier.status(f"n={i}") for i in range(count)), daemon=True
    )
    sender.start()
    sender.join(timeout=30)
    assert not sender.is_alive(), "notify blocked on a full receiver"
    assert len(sent) == count and sent[0] is True and sent[-1] is False  # later ones dropped
    receiver.settimeout(0.1)
    assert receiver.recv(100) == b"STATUS=n=0"  # what fitted arrived, in order
    receiver.close()
