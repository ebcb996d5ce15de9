"""Loopback ports for servers that tests start."""

import socket
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose listener never accepts and whose queue is full: connects time out.

    listen(0) queues one connection; once queued ones fill it the kernel drops further SYNs, so a
    client waits for its connect timeout, as with a replica that is down behind a live address.
    """
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        while not _connect_times_out(port):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
            if len(fillers) > 16:
                raise RuntimeError("the listen queue never filled")
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


def _connect_times_out(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
        except TimeoutError:
            return True
    return False
