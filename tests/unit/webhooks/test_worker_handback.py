"""When a pool thread that has answered wakes the worker's main loop (webhooks.worker).

A kept-alive connection whose answer is out goes back without a wake-up: the client's next
request wakes the loop. Whatever the loop must do at once (finish an answer, close, hand the
threads the large body waiting for this one) wakes it. The thread's hand-back is run here on a
worker built without gunicorn's start-up, with the application's answer made up.
"""

from __future__ import annotations

import os
import queue
import selectors
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhooks.worker import LARGE_BODY, AdmissionWorker, Connection, Handover


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[AdmissionWorker]:
    worker = AdmissionWorker.__new__(AdmissionWorker)
    worker.alive = True
    worker.ready = Handover()
    worker.returned = queue.SimpleQueue()
    worker.handback = threading.Lock()
    worker.wake_read, worker.wake_write = os.pipe()
    os.set_blocking(worker.wake_read, False)
    worker.wake_pending = False
    worker.large_lock = os.open(tmp_path / "large-body.lock", os.O_RDWR | os.O_CREAT, 0o600)
    yield worker
    for descriptor in (worker.wake_read, worker.wake_write, worker.large_lock):
        os.close(descriptor)


def hand_back(worker: AdmissionWorker, body: bytes, *, unsent: bytes = b"",
              close_after: bool = False) -> bool:
    """One request answered by a thread on a kept-alive connection in the poller; whether the
    thread woke the main loop."""
    ours, theirs = socket.socketpair()
    try:
        connection = Connection(ours, None, False)
        connection.events = selectors.EVENT_READ
        connection.body = body

        def answer(answered: Connection) -> None:
            answered.answer = unsent  # what the socket did not take
            answered.close_after = close_after

        worker._answer = answer  # type: ignore[method-assign,assignment]
        worker.ready.put(connection)
        worker.ready.put(None)
        worker._serve_requests()
        assert worker.returned.get_nowait() is connection
        try:
            return os.read(worker.wake_read, 16) == b"\0"
        except BlockingIOError:
            return False
    finally:
        ours.close()
        theirs.close()


def test_an_answered_kept_alive_review_goes_back_without_a_wake_up(
        worker: AdmissionWorker) -> None:
    assert not hand_back(worker, b"{}")


def test_the_loop_is_woken_to_hand_on_the_next_large_body(worker: AdmissionWorker) -> None:
    # Other large bodies may wait in the loop for this one (one in the threads at a time).
    assert hand_back(worker, b" " * (LARGE_BODY + 1))


def test_the_loop_is_woken_to_finish_an_answer_or_to_close(worker: AdmissionWorker) -> None:
    assert hand_back(worker, b"{}", unsent=b"the rest")
    worker.wake_pending = False  # the loop read the wake-up
    assert hand_back(worker, b"{}", close_after=True)
