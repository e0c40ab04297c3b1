"""The gunicorn worker class: gthread, but a worker only accepts connections while it has an idle thread.

Plain gthread workers accept every connection they can reach, busy or not (gunicorn issue #3433).
Kept-alive clients that connect at the same moment then often all land on one worker, which
serves them on one core while the other worker idles: measured here, a whole server run at
half its rate or worse. Holding back `accept` while every thread is busy leaves the waiting
connection to a worker that has a thread free.
"""

from __future__ import annotations

from concurrent.futures import Future

from gunicorn.workers.gthread import TConn, ThreadWorker


class IdleThreadWorker(ThreadWorker):
    """A gthread worker that stops accepting new connections while all of its threads are busy."""

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

    def enqueue_req(self, conn: TConn) -> None:
        """Hand a connection to the thread pool, counting the thread it will occupy."""
        self._busy_threads += 1
        super().enqueue_req(conn)

    def finish_request(self, conn: TConn, fs: Future) -> None:
        """Count the thread as free again, then let gthread keep or close the connection."""
        self._busy_threads -= 1
        super().finish_request(conn, fs)
