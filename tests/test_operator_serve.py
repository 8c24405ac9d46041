"""What the operator of ``qadom serve`` sees while the node starts: a stop by SIGINT or SIGTERM
before it serves, and a data dir whose store cannot be read. Real ``qadom`` processes on
127.0.0.1 (port 0), each bounded by a timeout and killed in a ``finally``."""

from __future__ import annotations

import select
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

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


# A ``qadom serve`` that gets SIGINT before it has set up its own handling of it (the signal sent
# while it works out its data directory): asyncio's runner turns it into KeyboardInterrupt.
EARLY_SIGINT = """
import os, signal, sys
from qadom import cli

data_dir = cli._data_dir

def interrupted(args):
    os.kill(os.getpid(), signal.SIGINT)
    return data_dir(args)

cli._data_dir = interrupted
sys.exit(cli.main(sys.argv[1:]))
"""


def test_serve_interrupted_before_it_handles_sigint_itself_exits_0(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", EARLY_SIGINT, "serve", "--port", "0", "--memory"],
        capture_output=True, timeout=30, cwd=ROOT, check=False)
    err = result.stderr.decode()
    # Before: exit 130 with "qadom: interrupted", though serve documents 0 for a stop by SIGINT.
    assert (result.returncode, result.stdout) == (0, b""), err
    assert "Traceback" not in err and "qadom: " not in err


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
