"""What the operator of ``qadom serve`` sees while the node starts: a stop by SIGINT or SIGTERM
before it serves, and a data dir whose store cannot be read; a second signal while ``serve`` or
``subscribe`` stops; and a Ctrl-C while any ``qadom`` command starts, even while Python still
imports qadom (which makes that short: importing the package imports nothing until a name is
used). Real ``qadom`` processes on 127.0.0.1 (port 0), each bounded by a timeout and killed in a
``finally``."""

from __future__ import annotations

import importlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

import qadom
from qadom.sqlite_store import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 20.0


def _read_line(stream: IO[bytes], timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no output from qadom serve in time"
    return stream.readline().decode()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


# A ``qadom serve`` whose start (opening its data dir, binding its socket) never ends until
# cancelled, as on a slow disk or a slow resolver: it prints "starting" once the start has begun.
HANGING_START = """
import asyncio, sys
from qadom import cli, peer

async def bind(self):
    print("starting", flush=True)
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        print("start cancelled", file=sys.stderr, flush=True)
        raise

peer.Peer._bind = bind
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_stopped_while_it_starts_exits_0_without_a_traceback(
        tmp_path: Path, sig: signal.Signals) -> None:
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", HANGING_START, "serve", "--port", "0", "--memory"],
            stdout=subprocess.PIPE, stderr=err, cwd=ROOT, bufsize=0)
    try:
        assert proc.stdout is not None
        assert _read_line(proc.stdout, TIMEOUT) == "starting\n"
        proc.send_signal(sig)
        code = proc.wait(timeout=10)
        rest = proc.stdout.read().decode()
    finally:
        _kill(proc)
    text = log.read_text()
    # Before: SIGINT ended it with "qadom: interrupted" (130), SIGTERM killed it (-15).
    assert code == 0, text
    assert "start cancelled" in text and "shutting down" in text
    assert "Traceback" not in text and "qadom: " not in text
    assert "serving on" not in rest  # it never served


# A ``qadom serve`` that gets a signal while it works out its data directory, before it opens
# its store or binds a socket.
EARLY_SIGNAL = """
import os, signal, sys
from qadom import cli

data_dir = cli._data_dir

def interrupted(args):
    os.kill(os.getpid(), signal.{name})
    return data_dir(args)

cli._data_dir = interrupted
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_stopped_while_it_reads_its_arguments_exits_0(sig: signal.Signals) -> None:
    result = subprocess.run(
        [sys.executable, "-c", EARLY_SIGNAL.format(name=sig.name), "serve", "--port", "0",
         "--memory"], capture_output=True, timeout=30, cwd=ROOT, check=False)
    err = result.stderr.decode()
    # Before: SIGINT exited 130 with "qadom: interrupted", then SIGTERM killed it (-15), though
    # serve documents 0 for a stop by either, even while it starts.
    assert (result.returncode, result.stdout) == (0, b""), err
    assert "Traceback" not in err and "qadom: " not in err


# Ctrl-C while a command starts, before it handles SIGINT itself. Python imports this module,
# as sitecustomize, when it starts, before any of qadom's code runs; it sends the process SIGINT
# at the point named by POINT, on every run: when the command imports the node ("qadom.peer",
# which loads most of what qadom needs) or its own module ("qadom.cli"), or when it parses its
# arguments ("parse").
INTERRUPT_AT = """
import argparse, os, signal, sys

POINT = {point!r}

def interrupt():
    os.kill(os.getpid(), signal.SIGINT)

class InterruptOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == POINT:
            interrupt()
        return None

if POINT.startswith("qadom."):
    sys.meta_path.insert(0, InterruptOnImport())
else:
    parse_known_args = argparse.ArgumentParser.parse_known_args

    def interrupted(self, *args, **kwargs):
        interrupt()
        return parse_known_args(self, *args, **kwargs)

    argparse.ArgumentParser.parse_known_args = interrupted
"""

# The two ways to start the command: ``python -m qadom``, and the console script, which runs
# what pyproject.toml's [project.scripts] names, qadom.cli:main.
ENTRIES = {
    "python -m qadom": ["-m", "qadom"],
    "qadom": ["-c", "import sys; from qadom.cli import main; sys.exit(main())"],
}


def _with_sitecustomize(directory: Path, code: str) -> dict[str, str]:
    """The environment of a Python that imports ``code`` as sitecustomize when it starts."""
    (directory / "sitecustomize.py").write_text(code)
    path = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize(("entry", "point"), [
    *((entry, point) for entry in sorted(ENTRIES) for point in ("qadom.peer", "parse")),
    # Only python -m can act before qadom.cli loads: the console script starts by importing it.
    ("python -m qadom", "qadom.cli"),
])
@pytest.mark.parametrize("command", [["serve", "--port", "0", "--memory"],
                                     ["get", "1", "--bootstrap", "127.0.0.1:9"]])
def test_a_command_interrupted_as_it_starts_dies_of_sigint_without_a_traceback(
        tmp_path: Path, entry: str, point: str, command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, *ENTRIES[entry], *command], capture_output=True, timeout=30, cwd=ROOT,
        env=_with_sitecustomize(tmp_path, INTERRUPT_AT.format(point=point)), check=False)
    # Before: Python's KeyboardInterrupt, raised from inside an import of qadom or from
    # argparse, with its traceback on stderr.
    assert result.stderr == b""
    assert (result.returncode, result.stdout) == (-signal.SIGINT, b"")


def test_importing_qadom_imports_none_of_its_modules_until_a_name_is_used() -> None:
    # What lets the command handle a Ctrl-C before the node loads (qadom.cli imports it).
    # Only qadom's own modules are compared: which standard modules the interpreter has loaded
    # before (importlib, warnings...) depends on its version and on the environment's .pth files.
    script = """
import sys
before = set(sys.modules)
import qadom
print(sorted(name for name in set(sys.modules) - before if name.partition(".")[0] == "qadom"))
from qadom import Peer
print("qadom.peer" in sys.modules, Peer.__module__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30,
                            cwd=ROOT, check=True)
    assert result.stdout.decode().splitlines() == ["['qadom']", "True qadom.peer"]


def test_each_public_name_of_qadom_is_its_modules_object() -> None:
    assert sorted(qadom._MODULE_OF) == sorted(qadom.__all__)
    for name in qadom.__all__:
        module = importlib.import_module(f"qadom.{qadom._MODULE_OF[name]}")
        assert getattr(qadom, name) is getattr(module, name)
        assert name in dir(qadom)
    # An unknown name is an error for mypy as well: type checkers see no module __getattr__.
    with pytest.raises(AttributeError, match="no attribute 'Nonexistent'"):
        qadom.Nonexistent  # type: ignore[attr-defined]  # noqa: B018
    assert not {"TYPE_CHECKING", "importlib", "_MODULE_OF", "__getattr__", "__dir__",
                "__main__"} & set(dir(qadom))


def test_dir_of_qadom_lists_its_submodules_before_they_are_imported() -> None:
    # What IPython completes after ``import qadom``: qadom.er<TAB> -> qadom.errors, while
    # nothing but the package is imported, and listing them imports none of them.
    script = """
import sys
import qadom
names = dir(qadom)
print([name for name in ("errors", "interactive", "runner", "widgets") if name in names])
print(sorted(name for name in sys.modules if name.startswith("qadom")))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30,
                            cwd=ROOT, check=True)
    assert result.stdout.decode().splitlines() == [
        "['errors', 'interactive', 'runner', 'widgets']", "['qadom']"]


def test_after_import_qadom_every_submodule_is_an_attribute_of_the_package() -> None:
    # As when the package imported every module itself: qadom.errors, qadom.node... are there
    # after a bare ``import qadom``, whatever was imported before or not.
    script = """
import qadom
print(qadom.errors.NotFoundError.__module__, qadom.node.Node.__name__, qadom.storage.__name__)
try:
    qadom.nonexistent
except AttributeError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30,
                            cwd=ROOT, check=True)
    assert result.stdout.decode().splitlines() == [
        "qadom.errors Node qadom.storage", "module 'qadom' has no attribute 'nonexistent'"]


# A one-shot command stopped once it has started, while it joins: this sitecustomize replaces
# Peer.bootstrap by one that sends SIGINT, then waits. asyncio's runner stops the command, which
# says so in one line (the guard that main() hands SIGINT back to Python's handler in time).
INTERRUPTED_JOIN = """
import asyncio, os, signal
from qadom import peer

async def bootstrap(self, addresses=None):
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.sleep(60)

peer.Peer.bootstrap = bootstrap
"""


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_a_one_shot_command_interrupted_once_started_exits_130_with_one_line(
        tmp_path: Path, entry: str) -> None:
    result = subprocess.run(
        [sys.executable, *ENTRIES[entry], "get", "1", "--bootstrap", "127.0.0.1:9"],
        capture_output=True, timeout=30, cwd=ROOT,
        env=_with_sitecustomize(tmp_path, INTERRUPTED_JOIN), check=False)
    assert (result.returncode, result.stdout, result.stderr) == (
        130, b"", b"qadom: interrupted\n")


def _damage_the_meta_table(path: Path) -> None:
    """A qadom store whose ``meta`` table (the node id) lies on a page overwritten with junk, as
    a failing disk leaves it: the file opens, the first read of the node id fails."""
    store = SqliteStore(path)
    store.set_meta("node_id", bytes(31) + b"\x01")
    store.close()
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        root = int(db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'meta'").fetchone()[0])
    finally:
        db.close()
    with path.open("r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xff" * page_size)


def test_serve_on_a_damaged_store_names_the_data_dir_not_the_socket(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _damage_the_meta_table(data_dir / "qadom.sqlite3")
    result = subprocess.run(
        [sys.executable, "-m", "qadom", "serve", "--port", "0", "--data-dir", str(data_dir)],
        capture_output=True, timeout=30, cwd=ROOT, check=False)
    err = result.stderr.decode()
    assert result.stdout == b"" and "Traceback" not in err
    # Before: exit 1, "qadom: cannot bind UDP on 127.0.0.1:0: this node's store cannot be read
    # (database disk image is malformed)", blaming a socket that was never the problem.
    assert result.returncode == 2, err
    assert err.endswith(
        f"qadom: cannot use data dir {str(data_dir)!r}: this node's store cannot be read "
        "(database disk image is malformed)\n"), err
    assert "UDP" not in err


# ``serve`` or ``subscribe`` stopped by a first signal while it joins (Peer.bootstrap replaced by
# one that sends it, then waits), then sent a second signal at a fixed point of its stop, as GNU
# timeout does (it signals the command, then the command's process group): while the peer
# closes; once the command's event loop has closed (asyncio's loop, whose close puts back the
# default handlers of the signals it handled); or as Python exits, once it has put back the
# default handlers of the signals its own handlers caught (an object of __main__ is destroyed
# after that, and sends it).
SIGNALLED_TWICE = """
import asyncio, os, signal, sys
from qadom import cli, peer, runner

SIG = signal.{sig}
POINT = {point!r}


def send(kill=os.kill, pid=os.getpid()):
    kill(pid, SIG)


async def bootstrap(self, addresses=None):
    send()
    await asyncio.Event().wait()


peer.Peer.bootstrap = bootstrap
if POINT == "while the peer closes":
    close = peer.Peer.close

    async def closing(self):
        send()
        await close(self)

    peer.Peer.close = closing
elif POINT == "once the loop closed":
    runner.loop_factory = lambda: asyncio.new_event_loop
    run = runner.run

    def run_then_signal(main, **kwargs):
        try:
            return run(main, **kwargs)
        finally:
            send()

    runner.run = run_then_signal
else:
    class SignalWhenDestroyed:
        def __del__(self):
            send()

    last = SignalWhenDestroyed()
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("point", ["while the peer closes", "once the loop closed",
                                   "as Python exits"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", [["serve", "--port", "0", "--memory"], ["subscribe", "1"]],
                         ids=["serve", "subscribe"])
def test_a_second_signal_during_the_stop_still_exits_0(
        point: str, sig: signal.Signals, command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SIGNALLED_TWICE.format(sig=sig.name, point=point), *command,
         "--bootstrap", "127.0.0.1:9"], capture_output=True, timeout=30, cwd=ROOT, check=False)
    err = result.stderr.decode()
    # Before: the second signal ended the stop by its default action, once the loop had put
    # back the default handlers or Python had as it exits: -2 or -15 (130 or 143 in the shell).
    assert result.returncode == 0, err
    assert "Traceback" not in err and "qadom: " not in err


# A program that runs a command itself, in its own process (as the tests do), and whose command
# ended without a stop signal: it gets its own SIGINT and SIGTERM handling back.
MAIN_IN_PROCESS = """
import signal, socket, sys
from qadom import cli

closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
closed.bind(("127.0.0.1", 0))
port = closed.getsockname()[1]
closed.close()  # nothing answers there
code = cli.main(["serve", "--port", "0", "--memory", "--bootstrap", f"127.0.0.1:{port}"])
print(code, signal.getsignal(signal.SIGINT) is signal.default_int_handler,
      signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""


def test_a_command_run_in_process_gives_the_stop_signals_back_when_it_ends() -> None:
    result = subprocess.run([sys.executable, "-c", MAIN_IN_PROCESS], capture_output=True,
                            timeout=60, cwd=ROOT, check=False)
    # Before: SIGINT and SIGTERM stayed with the ended command's handler, which ignored both
    # for good at the first one.
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("qadom serving on ") and lines[1:] == ["1 True True"], (
        result.stdout.decode() + result.stderr.decode())


def test_stop_signals_leave_an_ignored_sigint_ignored_and_need_the_main_thread() -> None:
    script = """
import signal, threading
from qadom import cli

signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a script
stop = cli._StopSignals(cli._handlers())
stop.install()
print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
      signal.getsignal(signal.SIGTERM) == stop._on_signal)
stop.restore()
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
failures = []
def elsewhere():
    try:
        cli._StopSignals(cli._handlers()).install()
    except Exception as exc:
        failures.append(exc)
thread = threading.Thread(target=elsewhere)
thread.start()
thread.join()
print(failures)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                            cwd=ROOT, check=False)
    assert result.stdout.decode().split("\n")[:3] == ["True True", "True", "[]"], (
        result.stdout.decode() + result.stderr.decode())
