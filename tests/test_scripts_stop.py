"""How the peer scripts stop: a Ctrl-C wherever it lands, an empty ``QADOM_BOOTSTRAP``, and a
reader of stdout that went away.

A Ctrl-C at an exact moment is a real SIGINT raised in the script's own process
(``signal.raise_signal``): the script runs under a small wrapper whose ``sys.stdout`` raises it
as soon as a chosen line has been written and flushed, so the Ctrl-C lands just after the
script printed its result, before it serves, every time. Every process listens on 127.0.0.1
port 0, every wait is bounded, and every process is killed in a ``finally``.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from qadom.interactive import (
    event_loop,
    front_end,
    script_options,
    serve_forever,
    shutdown,
    start_peer,
    started,
)

from helpers import FAST, PEERS, ROOT, SUDO_PYTHON_KEY

WAIT = 30  # seconds: the bound on any one expected output, and on a script's exit
SERVING = b"serving until Ctrl-C"  # on stderr once the script serves with Ctrl-C handled

# Runs the script sys.argv[1] with the arguments after sys.argv[2], raising SIGINT in its own
# process right after it has flushed a line holding the text sys.argv[2].
INTERRUPT_AFTER = """
import runpy, signal, sys

class InterruptAfter:
    def __init__(self, stream, mark):
        self.stream, self.mark, self.written = stream, mark, False
    def write(self, text):
        self.written = self.written or self.mark in text
        return self.stream.write(text)
    def flush(self):
        self.stream.flush()
        if self.written:
            self.written = False
            signal.raise_signal(signal.SIGINT)
    def __getattr__(self, name):
        return getattr(self.stream, name)

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
script, mark = sys.argv[1], sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
sys.stdout = InterruptAfter(sys.stdout, mark)
runpy.run_path(script, run_name="__main__")
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("QADOM_")}


def _read_until(fd: int, text: bytes, seen: bytearray) -> None:
    """Read ``fd`` into ``seen`` until ``text`` is in it; fails after ``WAIT`` seconds or at
    end of file."""
    deadline = time.monotonic() + WAIT
    while text not in seen:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        assert ready, f"no {text!r} within {WAIT} s; got {bytes(seen)!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"end of output before {text!r}; got {bytes(seen)!r}"
        seen += chunk


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=WAIT)


@pytest.fixture(scope="module")
def peer0() -> Iterator[str]:
    """peer0 serving on a free port for the module's tests: its HOST:PORT."""
    proc = subprocess.Popen([sys.executable, str(PEERS / "peer0.py"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    try:
        assert proc.stdout is not None
        out = bytearray()
        _read_until(proc.stdout.fileno(), b"\n", out)
        yield out.decode().split()[-1]
    finally:
        _stop(proc)


def _interrupted_after(script: str, mark: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``script`` run with ``args``, Ctrl-C'd just after it flushed the line holding ``mark``."""
    return subprocess.run([sys.executable, "-c", INTERRUPT_AFTER, str(PEERS / script), mark,
                           "--port", "0", *args],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=WAIT)


def test_ctrl_c_just_after_a_script_prints_ends_it_quietly_with_status_130(peer0: str) -> None:
    """Each script, Ctrl-C'd between printing its last line and serving: no traceback, status
    130, its lines printed in full (peer1 first, which stores what peer2 gets)."""
    cases = [
        ("peer1.py", str(SUDO_PYTHON_KEY), ["--bootstrap", peer0], str(SUDO_PYTHON_KEY)),
        ("peer2.py", "b'sudo python'", ["--bootstrap", peer0], "b'sudo python'"),
        ("peer0.py", "listening on", [], "listening on 127.0.0.1:"),
    ]
    for script, mark, args, last in cases:
        done = _interrupted_after(script, mark, *args)
        # Before: a KeyboardInterrupt traceback from the print, and death by SIGINT (-2).
        assert "Traceback" not in done.stderr, (script, done.stderr)
        assert (done.returncode, done.stderr) == (130, ""), script
        assert last in done.stdout.splitlines()[-1], (script, done.stdout)


def test_ctrl_c_before_serve_forever_has_its_handlers_stops_it_and_closes_the_peers(
        default_sigint: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that lands while serve_forever puts its signal handlers in place stops it as
    one that comes once it serves: it returns, the peers closed (it escaped, leaving them open)."""
    assert front_end() == "script"
    try:
        peer = start_peer(port=0, config=FAST)
        loop = event_loop()
        add_signal_handler = loop.add_signal_handler

        def interrupted(signum: int, callback: Callable[..., object], *args: object) -> None:
            if signum == signal.SIGINT:
                signal.raise_signal(signal.SIGINT)  # a Ctrl-C just before SIGINT's handler
            add_signal_handler(signum, callback, *args)

        monkeypatch.setattr(loop, "add_signal_handler", interrupted)
        try:
            serve_forever(announce=None)
        except KeyboardInterrupt:
            pytest.fail("a Ctrl-C before serve_forever's handlers were in place escaped it")
        assert peer.closed and started() == []
        assert loop.is_closed()
    finally:
        shutdown()


@pytest.mark.parametrize("raw", ["", ",", " , "])
def test_an_empty_qadom_bootstrap_is_a_usage_error_where_a_peer_is_the_default(
        raw: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``QADOM_BOOTSTRAP=$ADDR`` with ADDR unset: peer1 and peer2 (whose default is a peer to
    join through) would join nobody and run alone, peer1 printing a key stored in itself only;
    it is a usage error naming the variable. For peer0 (no default bootstrap) it means none."""
    with pytest.raises(SystemExit) as info:
        script_options("t", port=9997, bootstrap=["127.0.0.1:9999"], argv=[],
                       environ={"QADOM_BOOTSTRAP": raw, "QADOM_PORT": "0"})
    assert info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert "error: QADOM_BOOTSTRAP is set but names no peer" in error
    assert "127.0.0.1:9999" in error  # what unsetting it gives
    assert script_options("t", port=9999, argv=[], environ={"QADOM_BOOTSTRAP": raw}).bootstrap == ()


def test_a_script_whose_stdout_reader_went_away_serves_on(peer0: str) -> None:
    """peer0 and peer1 with stdout a pipe nobody reads (``python peers/peer1.py | head -n 0``):
    no BrokenPipeError traceback; each line goes to stderr instead, saying so, the script
    serves on, and Ctrl-C stops it with status 0."""
    for script, args, line in [
        ("peer0.py", [], "peer0 listening on 127.0.0.1:"),
        ("peer1.py", ["--bootstrap", peer0], str(SUDO_PYTHON_KEY)),
    ]:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader has gone before the first line
        try:
            proc = subprocess.Popen([sys.executable, str(PEERS / script), "--port", "0", *args],
                                    stdout=write_end, stderr=subprocess.PIPE, env=_env(),
                                    cwd=ROOT)
        finally:
            os.close(write_end)
        try:
            assert proc.stderr is not None
            err = bytearray()
            # Before: a BrokenPipeError traceback, exit status 1, and no serving.
            _read_until(proc.stderr.fileno(), SERVING + b"\n", err)
            assert b"Traceback" not in err
            gone = f"{script}: the reader of stdout went away; serving on without it: "
            assert gone + line in err.decode(), err.decode()
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=WAIT)
            assert (proc.returncode, rest) == (0, b""), (err + rest).decode()
        finally:
            _stop(proc)
