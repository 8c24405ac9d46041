"""The ``qadom`` command at its edges: what a hostile node's INFO summary can put on the screen,
output that cannot be written (a full disk, a reader gone, a closed stdout) for ``--help`` and
for ``serve``, and ``serve``'s fallback to its saved contacts when its ``--bootstrap`` address is
one of them.

Commands whose outcome is an exit status, a signal or a file descriptor run as processes
(bounded by a timeout, killed in a ``finally``); the others run in-process against real peers
on 127.0.0.1 port 0 with short timeouts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_cli import ROOT, RUN_TIMEOUT, START_TIMEOUT, one_line_error, stop

from qadom import Config, NoPeersError, Peer, cli
from qadom.contact import Contact
from qadom.errors import ProtocolError

FULL = Path("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="no /dev/full here")

# Characters a node could use to write on the operator's terminal: ESC (the start of an escape
# sequence: here one that sets the window title, then one that clears the screen), BEL, a
# carriage return and a newline (a made-up line), a bidirectional override, a lone surrogate
# (which cannot even be encoded for the terminal) and DEL.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\r\nid 0\u202e\ud800\x7f"

# One ping a round trip, a quarter of a second to time out: a silent address costs 0.25 s.
FAST = Config(rpc_timeout=0.25, rpc_timeout_min=0.25, rpc_timeout_max=0.25, rpc_retries=0,
              operation_timeout=5.0)


def shown_safely(text: str) -> bool:
    """Whether ``text`` holds only printable characters and newlines."""
    return all(c.isprintable() or c == "\n" for c in text)


def hostile_summary() -> dict[str, Any]:
    return {
        "id": "123" + HOSTILE,
        "address": "127.0.0.1:1" + HOSTILE,
        "client_only": False,
        "uptime": HOSTILE,
        "k": HOSTILE,
        "contacts": HOSTILE,
        "buckets": {"count": HOSTILE, "fill": [1, HOSTILE], "replacements": HOSTILE},
        "store": {"values": HOSTILE, "value_bytes": 3, "entry_keys": HOSTILE,
                  "entries": 1, "records" + HOSTILE: HOSTILE, HOSTILE: [HOSTILE]},
        "stats": {HOSTILE: 1},
    }


# ----------------------------------------------------------------------------- info


def test_info_text_shows_every_string_of_a_hostile_node_without_control_characters() -> None:
    text = cli.format_info(hostile_summary())
    # Before: the ESC, BEL, CR and newline of each field reached the terminal as they were.
    assert shown_safely(text), ascii(text)
    lines = text.split("\n")
    assert len(lines) == 9  # 7 rows, then the store's two other fields: no line made up
    assert lines[0] == "id           123?]0;owned??[2J??id 0???"
    assert lines[7].startswith("records?]0;owned")
    assert lines[8].startswith("?]0;owned??[2J??id 0???['")


def test_info_text_of_fields_of_unexpected_types_shows_them_as_they_are() -> None:
    text = cli.format_info({"id": 7, "buckets": "many", "store": ["values", 1], "uptime": None})
    lines = text.split("\n")
    assert lines[0].split() == ["id", "7"]
    assert lines[2].split() == ["uptime", "None", "s"]
    assert lines[4].split() == ["buckets", "None,", "contacts", "in", "each:"]
    assert len(lines) == 7


def test_info_text_of_a_real_summary_is_unchanged() -> None:
    summary = {"id": "42", "address": "127.0.0.1:9999", "uptime": 1.5, "k": 20, "contacts": 3,
               "buckets": {"count": 2, "fill": [1, 2], "replacements": 0},
               "store": {"values": 1, "value_bytes": 100, "entry_keys": 1, "entries": 2,
                         "records": 0, "stored_bytes": 164}}
    assert cli.format_info(summary) == "\n".join([
        "id           42",
        "address      127.0.0.1:9999",
        "uptime       1.5 s",
        "contacts     3 (k = 20, 0 waiting as replacements)",
        "buckets      2, contacts in each: 1 2",
        "values       1 (100 bytes)",
        "multimap     2 entries in 1 sets",
        "records      0",
        "stored bytes 164",
    ])


def no_constants(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")


async def run_info(document: bytes, *options: str) -> int:
    """``qadom info --node NODE OPTIONS`` in-process, against a node on 127.0.0.1 port 0 whose
    INFO reply is ``document``."""
    node = Peer("127.0.0.1", 0)
    await node.start()
    try:
        node.node.info.document = lambda now: document  # type: ignore[method-assign]
        host, port = node.address
        args = cli.parse_args(cli.build_parser(),
                              ["info", "--node", f"{host}:{port}", "--timeout", "5", *options])
        return int(await asyncio.wait_for(args.handler(args), 10))
    finally:
        await node.close()


@pytest.mark.parametrize("as_json", [True, False])
async def test_info_of_a_hostile_node_writes_no_control_character(
        capsys: pytest.CaptureFixture[str], as_json: bool) -> None:
    summary = hostile_summary()
    document = json.dumps(summary).encode()  # the surrogate as \ud800, as JSON allows
    assert await run_info(document, *(["--json"] if as_json else [])) == 0
    out = capsys.readouterr().out
    if as_json:
        # ASCII only, each of the node's characters past "~" or below " " as an escape: the
        # JSON document itself holds no control character but its newlines, and reads back
        # as exactly what the node sent.
        assert out.isascii() and shown_safely(out), ascii(out)
        assert json.loads(out, parse_constant=no_constants) == summary
    else:
        assert shown_safely(out), ascii(out)
        assert out.startswith("id           123?]0;owned??[2J??id 0???\n")


@pytest.mark.parametrize("document", [b'{"id": "1", "uptime": NaN}', b'{"uptime": 1e400}',
                                      b'{"contacts": -Infinity}'])
async def test_info_of_a_summary_that_is_not_json_fails_rather_than_writing_it(
        capsys: pytest.CaptureFixture[str], document: bytes) -> None:
    # Before: Python's parser took NaN and 1e400 (infinity), and --json wrote them out again as
    # NaN and Infinity, which no JSON parser reads (jq, JSON.parse).
    with pytest.raises(ProtocolError, match="INFO reply is not UTF-8 JSON"):
        await run_info(document, "--json")
    assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- output not written


def qadom_to(stdout: int | None, *args: str, redirection: str = "",
             ) -> subprocess.CompletedProcess[bytes]:
    """``python -m qadom ARGS`` with stdout on fd ``stdout`` (or closed by ``redirection``)."""
    command = ["sh", "-c", f'exec "$@" {redirection}', "sh", sys.executable, "-m", "qadom", *args]
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, timeout=RUN_TIMEOUT,
                          cwd=ROOT, check=False)


@needs_dev_full
@pytest.mark.parametrize("args", [["--help"], ["info", "--help"], ["serve", "-h"]])
def test_help_into_a_full_stdout_fails_with_one_line(args: list[str]) -> None:
    with FULL.open("wb") as full:
        result = qadom_to(full.fileno(), *args)
    # Before: argparse ignored the failed write and the command exited 0, without a word.
    assert result.returncode == 1
    assert result.stderr == b"qadom: cannot write stdout: No space left on device\n"


def test_help_with_stdout_closed_fails_with_one_line() -> None:
    result = qadom_to(subprocess.PIPE, "--help", redirection=">&-")
    # Before: argparse wrote the help to stderr instead, and exited 0.
    assert result.returncode == 1
    assert one_line_error(result) == "cannot write stdout: it is closed"


def pipe_without_reader() -> int:
    """The write end of a pipe whose read end is closed: each write fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


def test_help_whose_reader_has_gone_dies_of_sigpipe_silently() -> None:
    write = pipe_without_reader()
    try:
        result = qadom_to(write, "info", "--help")
    finally:
        os.close(write)
    # Before: exit 0, as if the help had been read. Now as `cat`: killed by SIGPIPE, no word.
    assert (result.returncode, result.stderr) == (-signal.SIGPIPE, b"")


def read_stderr_until(proc: subprocess.Popen[bytes], pattern: str, timeout: float) -> str:
    """What ``proc`` wrote to stderr, up to the first line matching ``pattern``."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    deadline = time.monotonic() + timeout
    text = ""
    while not re.search(pattern, text):
        left = deadline - time.monotonic()
        assert left > 0, f"{pattern!r} never came: {text}"
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 65536) if ready else b""
        assert chunk or not ready, f"stderr closed before {pattern!r}: {text}"
        text += chunk.decode()
    return text


async def test_serve_whose_stdout_reader_has_gone_keeps_serving_and_logs_its_address() -> None:
    write = pipe_without_reader()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qadom", "serve", "--port", "0", "--memory"],
            stdout=write, stderr=subprocess.PIPE, cwd=ROOT)
    finally:
        os.close(write)
    try:
        # Before: the node died of SIGPIPE as it wrote its address, before serving anything.
        log = read_stderr_until(proc, r"serving on without it: .*\n", START_TIMEOUT)
        found = re.search(r"the reader of stdout went away; serving on without it: "
                          r"qadom serving on 127\.0\.0\.1:(\d+) id (\d+)\n", log)
        assert found, log
        client = Peer("127.0.0.1", 0, config=FAST, client_only=True)
        async with client:
            contact = await asyncio.wait_for(client.ping(("127.0.0.1", int(found[1]))), 5)
        assert contact.id == int(found[2])
        assert proc.poll() is None
    finally:
        code = stop(proc)  # SIGTERM
    assert proc.stderr is not None
    log += proc.stderr.read().decode()
    proc.stderr.close()
    assert code == 0, log
    assert "shutting down" in log
    assert "Traceback" not in log and "Exception ignored" not in log


# ----------------------------------------------------------------------------- serve's rejoin


class Silent:
    """A UDP socket on 127.0.0.1 that never answers; counts the datagrams sent to it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def received(self) -> int:
        """How many datagrams arrived (loopback delivers a datagram as it is sent)."""
        count = 0
        while True:
            try:
                self.sock.recv(65536)
            except BlockingIOError:
                return count
            count += 1

    def close(self) -> None:
        self.sock.close()


async def join_with_saved(tmp_path: Path, saved: list[Contact], bootstrap: str) -> Peer:
    """A started node of ``serve --data-dir tmp_path --bootstrap BOOTSTRAP`` whose data dir saved
    ``saved``; its first join made (:func:`qadom.cli._join`). The caller closes it."""
    peer = Peer("127.0.0.1", 0, config=FAST, data_dir=str(tmp_path))
    await peer.start()
    try:
        peer.node.store.save_contacts(saved)
        args = cli.parse_args(cli.build_parser(), [
            "serve", "--port", "0", "--data-dir", str(tmp_path), "--bootstrap", bootstrap])
        await asyncio.wait_for(cli._join(peer, args, str(tmp_path)), 10)
    except BaseException:
        await peer.close()
        raise
    return peer


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_bootstrap_address_that_is_the_only_saved_contact_is_not_asked_twice(
        tmp_path: Path, host: str) -> None:
    silent = Silent()
    try:
        with pytest.raises(NoPeersError) as failure:
            await join_with_saved(tmp_path, [Contact(12345, ("127.0.0.1", silent.port))],
                                  f"{host}:{silent.port}")
        # Before: pinged again through the saved contacts, its timeout waited for twice, and
        # "nor at any of the 1 contacts saved": the same address.
        assert silent.received() == 1
    finally:
        silent.close()
    assert str(failure.value) == (
        f"could not join: no node answered at {host}:{silent.port}, and {str(tmp_path)!r} "
        "saved no other contact to rejoin through")


async def test_serve_rejoins_through_the_saved_contacts_other_than_its_bootstrap_address(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    silent = Silent()
    live = Peer("127.0.0.1", 0, config=FAST)
    await live.start()
    try:
        saved = [Contact(12345, ("127.0.0.1", silent.port)), Contact(live.id, live.address)]
        with caplog.at_level(logging.INFO, logger="qadom"):
            peer = await join_with_saved(tmp_path / "node", saved, f"127.0.0.1:{silent.port}")
        try:
            assert live.id in {contact.id for contact in peer.node.table}
        finally:
            await peer.close()
        assert silent.received() == 1  # before: 2, the rejoin pinged it again
    finally:
        await live.close()
        silent.close()
    assert "rejoined through saved contacts; 1 contact" in caplog.messages  # before: "1 contacts"


async def test_serve_logs_its_join_through_its_bootstrap_address(
        caplog: pytest.LogCaptureFixture) -> None:
    live = Peer("127.0.0.1", 0, config=FAST)
    await live.start()
    try:
        peer = Peer("127.0.0.1", 0, config=FAST)
        await peer.start()
        try:
            args = cli.parse_args(cli.build_parser(), [
                "serve", "--port", "0", "--memory", "--bootstrap", f"127.0.0.1:{live.address[1]}"])
            with caplog.at_level(logging.INFO, logger="qadom"):
                await asyncio.wait_for(cli._join(peer, args, None), 10)
        finally:
            await peer.close()
    finally:
        await live.close()
    # Before: "1 contacts".
    assert f"joined through 127.0.0.1:{live.address[1]}; 1 contact" in caplog.messages
