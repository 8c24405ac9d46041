"""Ctrl-C while a plain peer script joins: ``python peers/peer1.py`` whose bootstrap address
never answers (a bound UDP socket nobody reads), interrupted by SIGINT once its first datagram
has reached that address, ends quietly with status 130, as a Ctrl-C after the join does
(:func:`qadom.interactive.script_errors`). The script runs as its own process, every wait
bounded, and is killed in a ``finally``.
"""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30  # seconds: the bound on the script's start and on its exit


def test_ctrl_c_while_a_peer_script_joins_ends_it_quietly_with_status_130() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "peers" / "peer1.py"), "--host", "127.0.0.1",
             "--port", "0", "--bootstrap", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        try:
            # The join has begun once its first datagram arrives; nothing answers it, so the
            # join is still waiting when the Ctrl-C comes.
            ready, _, _ = select.select([silent], [], [], WAIT)
            assert ready, "the peer script sent nothing to its bootstrap address in time"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=WAIT)
    # Before: a KeyboardInterrupt traceback on stderr, and the status of an uncaught exception.
    assert "Traceback" not in err.decode(), err.decode()
    assert (proc.returncode, out, err) == (130, b"", b"")
