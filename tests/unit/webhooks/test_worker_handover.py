"""How the worker's main loop hands requests to its threads (webhooks.worker.Handover).

A request goes to one thread that waits, the last one to have started waiting, and only that
thread's inbox is touched; a request that finds no thread waiting is kept, in order, for the
next thread that asks. Each thread that waits here has an item in its inbox already (what the
thread would be blocked on), so `take` registers it and returns at once, deterministically.
"""

from __future__ import annotations

import queue
import threading

from webhooks.worker import Connection, Handover

WAITED = object()
"""What `take` returns for a thread that was waiting on its inbox."""


def waiting(handover: Handover) -> queue.SimpleQueue[Connection | None]:
    """A thread's inbox, registered as waiting."""
    inbox: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
    inbox.put(WAITED)  # type: ignore[arg-type]
    assert handover.take(inbox) is WAITED
    return inbox


def request(name: str) -> Connection:
    connection = Connection.__new__(Connection)
    connection.address = name
    return connection


def test_a_request_wakes_only_the_thread_that_waited_last() -> None:
    handover = Handover()
    first, last = waiting(handover), waiting(handover)
    one, two = request("one"), request("two")

    handover.put(one)
    assert last.get_nowait() is one
    assert first.empty()

    handover.put(two)
    assert first.get_nowait() is two


def test_requests_that_find_no_thread_waiting_are_taken_in_order() -> None:
    handover = Handover()
    one, two = request("one"), request("two")
    handover.put(one)
    handover.put(two)

    inbox: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
    assert handover.take(inbox) is one
    assert handover.take(inbox) is two
    assert inbox.empty()  # not registered as waiting while it had requests to take


def test_a_busy_thread_is_not_handed_a_request() -> None:
    handover = Handover()
    inbox = waiting(handover)
    handover.put(request("one"))
    inbox.get_nowait()  # the thread took it and is busy with it

    later = request("later")
    handover.put(later)
    assert inbox.empty()
    assert handover.take(inbox) is later  # what it finds once it asks again


def test_threads_serve_every_request_once_and_stop_on_none() -> None:
    handover = Handover()
    served: list[str] = []
    lock = threading.Lock()

    def serve() -> None:
        inbox: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        while (connection := handover.take(inbox)) is not None:
            with lock:
                served.append(connection.address)

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for thread in threads:
        thread.start()
    names = [f"r{n}" for n in range(500)]
    for name in names:
        handover.put(request(name))
    for _ in threads:
        handover.put(None)
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert sorted(served) == sorted(names)
