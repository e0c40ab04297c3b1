"""The gunicorn worker class: gthread that accepts only with a thread free, and is fair under saturation.

Plain gthread workers accept every connection they can reach, busy or not (gunicorn issue #3433).
Kept-alive clients that connect at the same moment then often all land on one worker, which
serves them on one core while the other worker idles: measured here, a whole server run at
half its rate or worse. Holding back `accept` while every thread is busy leaves the waiting
connection to a worker that has a thread free.

Held back, though, a new connection waits in the listen backlog while the kept-alive ones, which
never pass that gate, keep every thread busy: with 64 clients some waited over 2 s while the rest
were answered in tens of ms. So while a connection waits to be accepted, each response closes its
connection ("Connection: close"); its client reconnects and queues behind the waiting ones in the
kernel's first-in, first-out accept queue, and every client is served in turn
(benchmarks/saturation.py, docs/serving-saturation.md).
"""

from __future__ import annotations

import select
from concurrent.futures import Future

from gunicorn.workers.gthread import TConn, ThreadWorker


class IdleThreadWorker(ThreadWorker):
    """A gthread worker that accepts only with a thread free and closes connections while others wait to get in."""

    def __init__(self, *args, **kwargs) -> None:
        self._busy_threads = 0
        super().__init__(*args, **kwargs)

    # ThreadWorker.run() accepts while nr_conns < worker_connections; reading the limit as 0 while
    # every thread is busy turns accepting off until one finishes, without copying that loop.
    @property
    def worker_connections(self) -> int:
        """Return the connection limit, or 0 while no thread is free to take a new connection."""
        return self._connection_limit if self._busy_threads < self.cfg.threads else 0

    @worker_connections.setter
    def worker_connections(self, limit: int) -> None:
        self._connection_limit = limit

    # ThreadWorker.handle_request() answers "Connection: close" once len(keepalived_conns) >=
    # max_keepalived; reading the limit as 0 while a connection waits closes every response until none does.
    @property
    def max_keepalived(self) -> int:
        """Return how many idle connections may be kept alive: none while a new connection waits to be accepted."""
        return 0 if self.connection_waiting() else self._keepalive_limit

    @max_keepalived.setter
    def max_keepalived(self, limit: int) -> None:
        self._keepalive_limit = limit

    def connection_waiting(self) -> bool:
        """Return whether a listening socket holds a connection that no worker has accepted yet."""
        waiting = select.poll()  # one per call: a poll object must not be polled from two threads at once
        for listener in self.sockets:
            waiting.register(listener, select.POLLIN)
        return bool(waiting.poll(0))

    def enqueue_req(self, conn: TConn) -> None:
        """Hand a connection to the thread pool, counting the thread it will occupy."""
        self._busy_threads += 1
        super().enqueue_req(conn)

    def finish_request(self, conn: TConn, fs: Future) -> None:
        """Count the thread as free again, then let gthread keep or close the connection."""
        self._busy_threads -= 1
        super().finish_request(conn, fs)
