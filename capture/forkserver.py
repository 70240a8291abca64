"""Stripe-group processes forked from one pre-imported process: the fork server.

A stripe-group process started with ``exec`` imports Python's runtime, trio, pyarrow and our
modules, and builds the schema registry, on its own: about 40 MB of private memory per group
before it holds a single frame (bench/README.md, "Memory").  The daemon instead does that once,
before its event loop exists, and forks a small server from itself; the server forks each group
(and each restart of a group).  The groups then share those pages copy-on-write with the daemon
and with each other, and a group starts in milliseconds.

Why a server: a process cannot safely fork itself from inside its trio event loop (the loop's
epoll, wakeup socket and signal handling would be copied half-way), so the daemon forks once,
first, and the server, which has no loop and no threads, forks the rest.

Between the daemon and the server, one ``AF_UNIX`` ``SOCK_SEQPACKET`` socket pair (one message
per datagram, file descriptors attached with ``SCM_RIGHTS``):

* daemon -> server: ``start TOKEN GROUP`` with two descriptors, the new group's stdin and stdout
  (the pipes of capture.groups' protocol);
* server -> daemon: ``started TOKEN PID`` with a pidfd of the new process, or
  ``failed TOKEN REASON``; and ``exit TOKEN STATUS`` (a return code as :class:`subprocess.Popen`
  gives it: negative for a signal) when the server has reaped that group.  Tokens are never
  reused, so a status cannot be taken for another process's, even if a pid is.

The daemon watches and signals a group through its pidfd, which never names another process
even after the group has been reaped.  The group's exit status comes from the server, which is
the group's parent.  If the server dies, the running groups go on and become the daemon's
children (it is their subreaper, :func:`become_subreaper`; in a container it is PID 1 anyway),
so it reaps them itself, through their pidfds, and still learns how they ended; later groups
are started with ``exec`` (capture.groups).  When the daemon goes away (end of file on the
socket), the server waits for its groups, which stop on their own when their stdin closes, and
exits.

Linux only (pidfds: Linux 5.3); elsewhere, or with ``supervision.fork_server = false``, groups
are started with ``exec``.
"""

from __future__ import annotations

import array
import itertools
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import trio

from capture.errors import ForkServerError as ForkServerError
from capture.logs import get_logger

log = get_logger(component="forkserver")

# A group's entry point in the forked process: its --group argument -> its exit status.
Entry = Callable[[str], int]

_MAX_MESSAGE = 4096
_EXIT_UNCAUGHT = 70  # EX_SOFTWARE: the entry point raised
SERVER_EXIT_WAIT_S = 10.0
# A server that has not answered a start within this long is stuck (stopped, or blocked on a
# full stderr): lost, and the group is exec'd.
SPAWN_TIMEOUT_S = 30.0
_PR_SET_CHILD_SUBREAPER = 36


def supported() -> str | None:
    """Why this platform cannot run the fork server, or None if it can."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    for module, name in ((os, "fork"), (os, "pidfd_open"), (signal, "pidfd_send_signal")):
        if not hasattr(module, name):
            return f"no {module.__name__}.{name}"
    try:  # the kernel (5.3+) or a seccomp profile may still refuse them
        fd = os.pidfd_open(os.getpid())
        try:
            signal.pidfd_send_signal(fd, 0)
        finally:
            os.close(fd)
    except OSError as exc:
        return f"pidfds refused: {exc.strerror or exc}"
    return None


def thread_count() -> int:
    """Threads of this process (the kernel's count: pyarrow's threads are not Python's)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def become_subreaper() -> bool:
    """Make this process the parent of its descendants' orphans (``PR_SET_CHILD_SUBREAPER``):
    if the fork server dies, its groups come to the daemon, which can then reap them."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _reap_orphan(pidfd: int) -> int | None:
    """The return code of the ended process behind ``pidfd`` if it is this process's child now
    (an orphan, after the fork server died), reaping it; else None."""
    p_pidfd = getattr(os, "P_PIDFD", None)
    if p_pidfd is None:
        return None
    try:
        info = os.waitid(p_pidfd, pidfd, os.WEXITED | os.WNOHANG)
    except OSError:  # (ChildProcessError: not ours)
        return None
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


class ForkServer:
    """The daemon's side of the fork server."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = trio.socket.from_stdlib_socket(sock)
        self._tokens = itertools.count(1)
        self._replies: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._live: dict[int, ForkedProcess] = {}  # token -> process not yet reported exited
        self._early_exits: dict[int, int] = {}  # token -> status, for a reply not yet taken
        self.lost: str | None = None  # why the server is unusable, once it is
        self.lost_event = trio.Event()
        self._closed = False

    @classmethod
    def start(
        cls,
        entry: Entry,
        environ: Mapping[str, str] | None = None,
        *,
        preload: Callable[[], None] | None = None,
        allow_threads: bool = False,
    ) -> ForkServer | None:
        """Fork the server from this process, which must not run an event loop yet.  None (and
        a log line saying why) if it cannot be used here: the caller starts groups with exec.

        ``environ``: the environment of the server and so of every group (default: this
        process's).  ``preload``: run first, where the server can run (the daemon imports
        what its groups run: ``capture.cli``).  ``allow_threads``: fork even if this process
        has other threads (a test process, whose pyarrow pools run; the daemon itself has none
        at this point)."""
        why = supported()
        if why is None and preload is not None:
            preload()
        if why is None and not allow_threads and (n := thread_count()) > 1:
            why = f"this process already runs {n} threads"
        if why is not None:
            log.warning("stripe groups start with exec, not forked", reason=why)
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the server (and every group) would write it again
        try:
            pid = os.fork()
        except OSError as exc:
            ours.close()
            theirs.close()
            log.warning("stripe groups start with exec, not forked", reason=str(exc))
            return None
        if pid == 0:  # the server
            code = 0
            try:
                ours.close()
                if environ is not None:
                    os.environ.clear()
                    os.environ.update(environ)
                code = _serve(theirs, entry)
            except BaseException:  # noqa: BLE001 - a fork must never unwind into the daemon's stack
                traceback.print_exc()
                code = _EXIT_UNCAUGHT
            finally:
                sys.stderr.flush()
                os._exit(code)
        theirs.close()
        log.info("fork server started", pid=pid, subreaper=become_subreaper())
        return cls(pid, ours)

    @property
    def usable(self) -> bool:
        return self.lost is None and not self._closed

    async def serve(self) -> None:
        """Read the server's messages until it is gone (a task for the daemon's lifetime)."""
        while True:
            try:
                data, ancdata, flags, _addr = await self._sock.recvmsg(
                    _MAX_MESSAGE,
                    socket.CMSG_SPACE(array.array("i").itemsize),
                    socket.MSG_CMSG_CLOEXEC,
                )
            except OSError as exc:
                self._lose(f"cannot read from it: {exc}")
                return
            if not data:
                self._lose("it exited")
                return
            fds = _fds(ancdata)
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                for fd in fds:
                    os.close(fd)
                self._lose("a truncated message")
                return
            self._dispatch(data.decode("ascii", "replace").split(), fds)

    def _dispatch(self, words: list[str], fds: list[int]) -> None:
        try:
            kind = words[0]
            if kind in ("started", "failed"):
                event, result = self._replies.pop(int(words[1]))
                result.extend([kind, words[2:], fds])
                fds = []
                event.set()
            elif kind == "exit":
                token, code = int(words[1]), int(words[2])
                proc = self._live.pop(token, None)
                if proc is not None:
                    proc._exited_with(code)
                else:  # reaped before the task that asked for it has taken the reply
                    self._early_exits[token] = code
            else:
                raise ValueError(kind)
        except (IndexError, KeyError, ValueError):
            log.error("unexpected message from the fork server", message=" ".join(words)[:200])
        finally:
            for fd in fds:
                os.close(fd)

    def _lose(self, why: str) -> None:
        if self.lost is None and not self._closed:
            log.error("fork server lost; stripe groups will start with exec", reason=why)
        if self.lost is None:
            self.lost = why
            self.lost_event.set()
        for event, _ in self._replies.values():
            event.set()  # each waiting spawn sees an empty reply
        self._replies.clear()

    async def spawn(self, group: str) -> ForkedProcess:
        """A new group process running the server's entry point with ``group``.
        :class:`ForkServerError` if the server cannot start it."""
        if not self.usable:
            raise ForkServerError(self.lost or "closed")
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        for fd in (stdin_w, stdout_r):
            os.set_inheritable(fd, False)
        token = next(self._tokens)
        event = trio.Event()
        result: list[Any] = []
        self._replies[token] = (event, result)
        ok = False
        try:
            message = f"start {token} {group}".encode("ascii")
            try:
                await self._sock.sendmsg(
                    [message],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [stdin_r, stdout_w]))],
                )
            except OSError as exc:
                self._lose(f"cannot write to it: {exc}")
                raise ForkServerError(self.lost or str(exc)) from None
            finally:
                os.close(stdin_r)  # the server has its copies (or nobody needs them)
                os.close(stdout_w)
            with trio.move_on_after(SPAWN_TIMEOUT_S):
                await event.wait()
            if not event.is_set():
                self._lose(f"no answer to a start within {SPAWN_TIMEOUT_S:.0f} s")
            if not result:
                raise ForkServerError(self.lost or "no reply")
            kind, words, fds = result
            if kind == "failed":
                reason = " ".join(words) or "fork failed"
                if reason.startswith("pidfd"):  # it will not get better: exec from now on
                    self._lose(reason)
                raise ForkServerError(reason)
            pid = int(words[0])
            if len(fds) != 1:
                raise ForkServerError("no pidfd with the reply")  # (its fds: closed below)
            proc = ForkedProcess(pid, fds.pop(), stdin_w, stdout_r, self.lost_event)
            if token in self._early_exits:
                proc._exited_with(self._early_exits.pop(token))
            else:
                self._live[token] = proc
            ok = True
            return proc
        finally:
            self._replies.pop(token, None)
            if not ok:
                os.close(stdin_w)
                os.close(stdout_r)
                if len(result) == 3:  # a reply not taken (cancelled, or malformed)
                    for fd in result[2]:
                        os.close(fd)
                    result[2].clear()
                # Its process, if any, was started: the server's stdin for it is closed now,
                # so it stops on its own; its exit status is not wanted.

    async def aclose(self) -> str | None:
        """Close the socket (the server then waits for its groups and exits) and reap the
        server.  Its exit status described, or None if it has not exited within
        :data:`SERVER_EXIT_WAIT_S` (the daemon has stopped its groups before this)."""
        self._closed = True
        self._sock.close()
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            pidfd = None
        try:
            if pidfd is not None:
                with trio.move_on_after(SERVER_EXIT_WAIT_S):
                    await trio.lowlevel.wait_readable(pidfd)
            pid, status = os.waitpid(self.pid, os.WNOHANG)  # noqa: ASYNC222 - never blocks
        except ChildProcessError:
            return None
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if pid == 0:
            log.error("fork server did not exit; leaving it", pid=self.pid)
            return None
        return f"status {os.waitstatus_to_exitcode(status)}"


class ForkedProcess:
    """A group process from the server, with the interface capture.groups uses of
    :class:`trio.Process`: ``pid``, ``stdin``, ``stdout``, ``wait``, ``kill``, ``send_signal``."""

    def __init__(
        self, pid: int, pidfd: int, stdin: int, stdout: int, server_lost: trio.Event
    ) -> None:
        self.pid = pid
        self._server_lost = server_lost
        self.stdin: trio.lowlevel.FdStream | None = trio.lowlevel.FdStream(stdin)
        self.stdout: trio.lowlevel.FdStream | None = trio.lowlevel.FdStream(stdout)
        self._pidfd: int | None = pidfd
        self._done = trio.Event()
        self.returncode: int | None = None

    def _exited_with(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    async def wait(self) -> int | None:
        """Until the process has ended: its return code.  Once the server, its parent, is gone,
        its end shows on its pidfd and its status is ours to reap (None if it is not)."""
        if not self._done.is_set():
            async with trio.open_nursery() as nursery:

                async def until(event: trio.Event) -> None:
                    await event.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until, self._done)
                nursery.start_soon(until, self._server_lost)
        if not self._done.is_set() and self._pidfd is not None:
            await trio.lowlevel.wait_readable(self._pidfd)
            self.returncode = _reap_orphan(self._pidfd)
            self._done.set()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self._pidfd is None or self._done.is_set():
            return
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass  # already ended; its status is on its way

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def release(self) -> None:
        """Close its pidfd (its pipes are ``stdin`` and ``stdout``, closed by their user)."""
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def _fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


# -- the server process ----------------------------------------------------------------------


def _serve(sock: socket.socket, entry: Entry) -> int:
    """The server's loop: fork a group per request, report each group's exit."""
    # The operator's signals are for the daemon (it passes them on); the server ends when the
    # daemon does.  Signals that arrive here wake the loop through a pipe.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    # Nothing the daemon inherited from whoever started it (a caller's pipe, a lock) stays open
    # in the server or its groups: only stderr (the log) and this socket.
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    keep = sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, _max_fd())
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    live: dict[int, str] = {}  # pid -> the daemon's token for it
    sock_fd = sock.fileno()
    listening = True
    while listening or live:
        ready, _, _ = select.select([sock_fd, wake_r] if listening else [wake_r], [], [])
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
        _reap(sock if listening else None, live)
        if listening and sock_fd in ready:
            try:
                data, ancdata, flags, _addr = sock.recvmsg(
                    _MAX_MESSAGE, socket.CMSG_SPACE(2 * array.array("i").itemsize)
                )
            except OSError:
                data, ancdata, flags = b"", [], 0
            fds = _fds(ancdata)
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                data = b"truncated"  # answered as malformed
            if not data:
                listening = False  # the daemon is gone: wait for the groups, then exit
                for fd in fds:
                    os.close(fd)
                continue
            started = _start(sock, data, fds, entry, (wake_r, wake_w))
            if started is not None:
                live[started[0]] = started[1]
    return 0


def _max_fd() -> int:
    try:
        return max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


def _send(sock: socket.socket | None, text: str, fds: list[int] | None = None) -> None:
    if sock is None:
        return
    try:
        if fds:
            sock.sendmsg(
                [text.encode("ascii")],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
            )
        else:
            sock.send(text.encode("ascii"))
    except OSError:
        pass  # the daemon is gone; the loop sees the end of file


def _reap(sock: socket.socket | None, live: dict[int, str]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            live.clear()
            return
        if pid == 0:
            return
        token = live.pop(pid, None)
        if token is not None:  # (not one the daemon never heard of: see _start)
            _send(sock, f"exit {token} {os.waitstatus_to_exitcode(status)}")


def _start(
    sock: socket.socket, data: bytes, fds: list[int], entry: Entry, wake: tuple[int, int]
) -> tuple[int, str] | None:
    """Fork a group for a ``start`` request: its pid and the daemon's token, or None."""
    words = data.decode("ascii", "replace").split()
    if len(words) != 3 or words[0] != "start" or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        token = words[1] if len(words) > 1 else "0"
        _send(sock, f"failed {token} malformed request")
        return None
    token, group = words[1], words[2]
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        _send(sock, f"failed {token} fork: {exc.strerror or exc}")
        return None
    if pid == 0:  # the group
        code = _EXIT_UNCAUGHT
        try:
            code = _be_group(sock, fds, wake, entry, group)
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)  # before this loop can reap it: always this process
    except OSError as exc:
        _send(sock, f"failed {token} pidfd: {exc.strerror or exc}")
        os.kill(pid, signal.SIGKILL)
        return None  # reaped, not reported: the daemon never heard of it
    _send(sock, f"started {token} {pid}", [pidfd])
    os.close(pidfd)
    return pid, token


def _be_group(
    sock: socket.socket, fds: list[int], wake: tuple[int, int], entry: Entry, group: str
) -> int:
    """The forked group, start to end: its exit status, as an exec'd interpreter would end."""
    code = _EXIT_UNCAUGHT
    interrupted = False
    try:
        sock.close()
        _become_group(fds, wake)
        code = entry(group)
    except SystemExit as exc:  # as the interpreter: None 0, an int itself, else print it, 1
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # ("now": the operator's second signal) killed by SIGINT
        interrupted = True
    except BaseException:  # noqa: BLE001 - a fork must never unwind into the server's loop
        traceback.print_exc()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _become_group(fds: list[int], wake: tuple[int, int]) -> None:
    """In the forked group: the process an exec'd group would be at start."""
    signal.set_wakeup_fd(-1)
    for fd in wake:
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # SIGHUP stays ignored until the group's own handler is in place (capture.cli).
    stdin, stdout = fds  # (>= 3: the server's 0 and 1 are open, on /dev/null)
    os.dup2(stdin, 0)
    os.dup2(stdout, 1)
    for fd in fds:
        os.close(fd)
