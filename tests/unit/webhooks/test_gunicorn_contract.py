"""What AdmissionWorker relies on in gunicorn (pinned to 27.0.x in setup.cfg).

The worker uses gunicorn as the process manager only: `gunicorn.workers.base.Worker` as its base
class, and the master that forks it, passes it the application and the listeners, reads its
heartbeat and stops it. Each test names one piece of that contract; when a gunicorn release
changes it, the test says which, before a production server finds out.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import signal
import socket
from typing import Any

import gunicorn
import pytest
from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.workers.base import Worker

from webhooks.server import GRACEFUL_SECONDS, ServerOptions, gunicorn_settings
from webhooks.worker import STOP_LINGER, AdmissionWorker


def test_the_pinned_release() -> None:
    # setup.cfg pins gunicorn>=27.0.1,<27.1: moving the pin means reading this file again.
    assert gunicorn.__version__.startswith("27.0."), gunicorn.__version__


def test_the_worker_constructor_takes_what_the_master_passes() -> None:
    parameters = list(inspect.signature(Worker.__init__).parameters)
    assert parameters == ["self", "age", "ppid", "sockets", "app", "timeout", "cfg", "log"]
    # The master passes its application object itself: the worker reads its limits, client
    # certificate setting, status port and TLS context from it (webhooks.worker.Served).
    spawn = inspect.getsource(Arbiter.spawn_worker)
    assert "self.worker_class(self.worker_age, self.pid, self.LISTENERS,\n" \
           "                                   self.app," in spawn


class _Application(BaseApplication):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()

    def load_config(self) -> None:
        self.cfg.set("threads", 3)

    def load(self) -> Any:
        return "the wsgi application"


class _Recorder(Worker):  # type: ignore[misc]
    """A base worker that records what init_process does, in the order it does it."""

    def __init__(self, *args: Any, calls: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = calls

    def init_signals(self) -> None:
        super().init_signals()
        self.calls.append("init_signals")

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.calls.append(f"load_wsgi: {self.wsgi}")

    def run(self) -> None:
        self.calls.append(f"run: alive={self.alive} booted={self.booted}")
        self.notify()  # the heartbeat the master watches
        os.kill(os.getpid(), signal.SIGTERM)
        self.calls.append(f"after SIGTERM: alive={self.alive}")


def _init_in_child(connection: Any) -> None:
    calls: list[str] = []
    application = _Application()
    config: Config = application.cfg
    config.set("post_worker_init", lambda worker: calls.append("post_worker_init"))
    listener = socket.socket()
    worker = _Recorder(1, os.getppid(), [listener], application, 30, config,
                       glogging.Logger(config), calls=calls)
    worker.init_process()
    connection.send([*calls, f"threads={config.threads}", f"app={worker.app is application}"])


def test_init_process_sets_up_signals_loads_the_app_then_runs() -> None:
    # In a child process: init_process installs signal handlers.
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(target=_init_in_child, args=(child,))
    process.start()
    process.join(30)
    assert process.exitcode == 0
    calls = parent.recv()
    assert calls == ["init_signals", "load_wsgi: the wsgi application", "post_worker_init",
                     "run: alive=True booted=True",
                     # SIGTERM only clears `alive` (handle_exit): the main loop stops itself
                     "after SIGTERM: alive=False",
                     "threads=3", "app=True"]


def test_the_worker_overrides_only_what_it_means_to() -> None:
    overridden = {name for name, value in vars(AdmissionWorker).items()
                  if callable(value) and name in vars(Worker)}
    assert overridden == {"init_process", "init_signals", "run"}
    # gunicorn's own handlers stay: SIGTERM stops gracefully, SIGQUIT/SIGINT at once.
    assert inspect.getsource(Worker.handle_exit).strip().endswith("self.alive = False")
    assert "sys.exit(0)" in inspect.getsource(Worker.handle_quit)


def test_the_stop_ends_before_the_master_kills() -> None:
    # The master sends SIGKILL graceful_timeout seconds after SIGTERM (Arbiter.stop); the
    # worker gives up waiting 2 s before that, and closes idle and stalled connections after
    # STOP_LINGER.
    assert "self.kill_workers(signal.SIGKILL)" in inspect.getsource(Arbiter.stop)
    assert "limit = time.time() + self.cfg.graceful_timeout" in inspect.getsource(Arbiter.stop)
    settings = gunicorn_settings(ServerOptions(bind="127.0.0.1:0", cert_file="c",  # type: ignore[arg-type]
                                               key_file="k", policy_file="p"))  # type: ignore[arg-type]
    assert settings["graceful_timeout"] == GRACEFUL_SECONDS > STOP_LINGER + 2
    # The heartbeat: the master kills a worker silent for `timeout`; it hands the worker half.
    assert "self.timeout / 2.0" in inspect.getsource(Arbiter.spawn_worker)
    assert settings["timeout"] / 2 > 1.0  # the main loop notifies at least once a second


@pytest.mark.parametrize("name", ["post_fork", "post_worker_init", "child_exit"])
def test_the_hooks_exist(name: str) -> None:
    assert name in Config().settings
