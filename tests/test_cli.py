"""The ``qadom`` command end to end: real ``qadom serve`` processes on 127.0.0.1 (port 0), each
one-shot command run as its own process, its exit status, stdout bytes and stderr line checked.

Two nodes serve the whole module (B joined through A), so most tests cost one short process.
Every process is bounded by a timeout and killed in a ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import pytest

from qadom import Identity, Peer, StorageUnavailable, cli
from qadom.cli import parse_address, parse_id, parse_port
from qadom.ids import key_for
from qadom.sqlite_store import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 45.0  # one command: start-up, joining and one operation, on a loaded machine
START_TIMEOUT = 20.0


@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    address: str  # HOST:PORT
    id: int
    stderr: Path


def qadom(*args: str, stdin: bytes | None = None,
          timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m qadom ARGS`` to completion (killed after ``timeout``)."""
    return subprocess.run([sys.executable, "-m", "qadom", *args], input=stdin,
                          capture_output=True, timeout=timeout, cwd=ROOT, check=False)


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """The failure's reason, checking the contract: non-zero, empty stdout, stderr exactly one
    line ``qadom: <reason>``."""
    err = result.stderr.decode()
    assert result.returncode != 0, err
    assert result.stdout == b""
    assert err.count("\n") == 1 and err.endswith("\n") and err.startswith("qadom: "), err
    assert "Traceback" not in err
    return err[len("qadom: "):-1]


def start_serve(*extra: str, stderr: Path, env: dict[str, str] | None = None) -> Node:
    """A ``qadom serve --port 0`` process; returns once its first line named its address."""
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qadom", "serve", "--port", "0", *extra],
            stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
            env=None if env is None else {**os.environ, **env})
    try:
        assert proc.stdout is not None
        line = _read_line(proc.stdout, START_TIMEOUT)
        words = line.split()
        assert words[:3] == ["qadom", "serving", "on"] and words[4] == "id", line
        return Node(proc, words[3], int(words[5]), stderr)
    except BaseException:
        stop(proc)
        raise


def _read_line(stream: IO[bytes], timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no output from qadom serve in time"
    return stream.readline().decode()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Stop ``proc`` (``sig`` first, SIGKILL if it lingers) and return its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def start_subscriber(*args: str, log: Path, program: tuple[str, ...] = ("-m", "qadom"),
                     stdout: IO[bytes] | int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """A ``qadom subscribe`` process (``python -c SCRIPT`` with ``program=("-c", SCRIPT)``),
    writing to ``stdout``; returns once it logged that its subscription is in place (so what is
    published from now on reaches it)."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, *program, "--log-level", "info", "subscribe", *args],
            stdout=stdout, stderr=err, cwd=ROOT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "subscribed to topic" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"never subscribed: {log.read_text()}"
            time.sleep(0.05)
    except BaseException:
        stop(proc, signal.SIGKILL)
        raise
    return proc


def wait_for_log(node: Node, text: str, timeout: float = START_TIMEOUT) -> None:
    """Bounded poll of ``node``'s stderr log until it holds ``text``."""
    deadline = time.monotonic() + timeout
    while text not in node.stderr.read_text():
        assert node.proc.poll() is None, node.stderr.read_text()
        assert time.monotonic() < deadline, f"{text!r} never logged: {node.stderr.read_text()}"
        time.sleep(0.05)


def closed_port() -> str:
    """HOST:PORT where nothing listens: a UDP port bound, noted and released."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    """Nodes A and B, B joined through A; both with data dirs under the test's tmp dir."""
    tmp = tmp_path_factory.mktemp("cli")
    started: list[Node] = []
    try:
        a = start_serve("--data-dir", str(tmp / "a"), stderr=tmp / "a.log")
        started.append(a)
        b = start_serve("--data-dir", str(tmp / "b"), "--bootstrap", a.address,
                        stderr=tmp / "b.log")
        started.append(b)
        wait_for_log(b, f"joined through {a.address};")
        yield a, b
    finally:
        for node in started:
            stop(node.proc)


def random_key() -> str:
    return str(random.getrandbits(256))


# ----------------------------------------------------------------------------- set and get


def test_set_from_stdin_then_get_is_binary_exact(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    value = b"\x00qadom\x00\xff\xfe\r\n\x00" + random.randbytes(16)
    stored = qadom("set", "-", "--bootstrap", a.address, stdin=value)
    assert stored.returncode == 0, stored.stderr
    assert stored.stderr == b""
    assert stored.stdout == f"{key_for(value)}\n".encode()
    fetched = qadom("get", str(key_for(value)), "--bootstrap", b.address)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == value
    assert fetched.stderr == b""


def test_set_file_of_8192_bytes_then_get_into_file_by_hex_key(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, b = nodes
    value = random.randbytes(8192)
    source = tmp_path / "value.bin"
    source.write_bytes(value)
    stored = qadom("set", str(source), "--bootstrap", b.address, "--bootstrap", a.address)
    assert stored.returncode == 0, stored.stderr
    key = int(stored.stdout)
    assert key == key_for(value)
    out = tmp_path / "out.bin"
    fetched = qadom("get", hex(key), "-o", str(out), "--bootstrap", a.address)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == b""
    assert out.read_bytes() == value


def test_set_of_8193_bytes_is_refused_and_stores_nothing(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    value = random.randbytes(8193)
    refused = qadom("set", "-", "--bootstrap", a.address, stdin=value)
    assert refused.returncode == 2
    reason = one_line_error(refused)
    assert "too large" in reason and "8192" in reason
    # Nor was any prefix of it stored under its own key.
    for candidate in (value, value[:8192]):
        missing = qadom("get", str(key_for(candidate)), "--bootstrap", a.address)
        assert missing.returncode == 1
        assert one_line_error(missing).startswith("not found")


def test_get_of_a_missing_key_says_not_found(nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, _ = nodes
    key = random_key()
    out = tmp_path / "never.bin"
    missing = qadom("get", key, "-o", str(out), "--bootstrap", a.address)
    assert missing.returncode == 1
    reason = one_line_error(missing)
    assert reason.startswith("not found") and key in reason
    assert not out.exists()


@pytest.mark.parametrize("problem", ["missing", "directory"])
def test_set_of_an_unreadable_file_is_a_usage_error(
        nodes: tuple[Node, Node], tmp_path: Path, problem: str) -> None:
    a, _ = nodes
    path = tmp_path / "nothing-here" if problem == "missing" else tmp_path
    result = qadom("set", str(path), "--bootstrap", a.address)
    assert result.returncode == 2
    reason = one_line_error(result)
    assert reason.startswith(f"cannot read '{path}'")


# ----------------------------------------------------------------------------- multimap


def test_append_then_search_prints_sorted_decimal_lines(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    key = random.getrandbits(256)
    values = [1000, 16, 2, 2**256 - 1]
    # Hex and decimal spellings of the key name the same set; values likewise.
    spellings = [(str(key), "1000"), (hex(key), "0x10"), (str(key), "2"),
                 (f"0X{key:X}", hex(2**256 - 1))]
    for key_text, value_text in spellings:
        added = qadom("append", key_text, value_text, "--bootstrap", a.address)
        assert added.returncode == 0, added.stderr
        assert added.stdout == b"" and added.stderr == b""
    found = qadom("search", hex(key), "--bootstrap", b.address)
    assert found.returncode == 0, found.stderr
    assert found.stdout.decode() == "".join(f"{v}\n" for v in sorted(values))
    assert found.stderr == b""


def test_search_of_an_empty_set_prints_nothing(nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    found = qadom("search", random_key(), "--bootstrap", a.address)
    assert (found.returncode, found.stdout, found.stderr) == (0, b"", b"")


@pytest.mark.parametrize("args", [
    ["get", "12ab"],
    ["get", "0x"],
    ["search", "-5"],
    ["get", str(2**256)],
    ["append", "1", "0xg"],
    ["append", "1", " 1"],
    ["get", "1" * 300],
])
def test_bad_key_or_value_text_is_a_usage_error(args: list[str]) -> None:
    # Refused while parsing: nothing joins, so no node is needed.
    result = qadom(*args, "--bootstrap", "127.0.0.1:9")
    assert result.returncode == 2
    reason = one_line_error(result)
    assert reason.startswith("argument KEY:") or reason.startswith("argument VALUE:")
    assert f"qadom {args[0]} --help" in reason


def test_parse_id_accepts_decimal_and_hex_only() -> None:
    assert parse_id("0") == 0
    assert parse_id("007") == 7
    assert parse_id("0x1F") == parse_id("0X1f") == 31
    assert parse_id(str(2**256 - 1)) == 2**256 - 1
    for text in ["", "1.0", "+1", "1_000", "0b1", "٣", "0x-1", hex(2**256)]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_id(text)


# ----------------------------------------------------------------------------- joining


def test_unreachable_bootstrap_fails_with_one_line() -> None:
    where = closed_port()
    result = qadom("get", "1", "--bootstrap", where)
    assert result.returncode == 1
    assert one_line_error(result) == f"no node answered at {where}"


@pytest.mark.parametrize("args", [
    ["get", "1", "--bootstrap", "127.0.0.1:9", "--bootstrap", "[::1]:9"],
    ["append", "1", "2", "--bootstrap", "[::1]:9", "--bootstrap", "127.0.0.1:9"],
    ["serve", "--port", "0", "--memory", "--bootstrap", "[::1]:9"],
    ["serve", "--port", "0", "--memory", "--host", "::1", "--bootstrap", "127.0.0.1:9"],
])
def test_a_bootstrap_address_of_the_other_ip_family_is_a_usage_error_naming_it(
        args: list[str]) -> None:
    # One UDP socket reaches one IP family: the first address's for a one-shot command,
    # --host's for serve.
    result = qadom(*args, timeout=15)
    assert result.returncode == 2
    reason = last_error_line(result)
    assert "cannot resolve" not in reason
    assert "--bootstrap" in reason and "cannot reach" in reason and "IPv" in reason, reason


class SlowLink(asyncio.DatagramProtocol):
    """A UDP relay in front of one node that holds each datagram, either way, ``delay`` seconds:
    a slow path to the network, for one client at a time. ``first`` is the loop time the
    client's first datagram came (its peer has started: its command's deadline is running)."""

    def __init__(self, node: tuple[str, int], delay: float) -> None:
        self.node = node
        self.delay = delay
        self.client: tuple[str, int] | None = None
        self.first: float | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        if addr == self.node:
            to = self.client
        else:
            if self.first is None:
                self.first = loop.time()
            self.client, to = addr, self.node
        if to is not None and self.transport is not None:
            loop.call_later(self.delay, self.transport.sendto, data, to)


ONE_WAY = 0.3  # a 0.6 s round trip: less than the 1 s a first request waits for its answer
DEADLINE = 1.5  # more than a join's two round trips, less than any command's whole run
EXIT_MARGIN = 2.0  # from the deadline to the end of the process: cancelling, closing, exiting


# Every one-shot command runs its steps inside one deadline (cli._joined): a one-step command,
# the one with the most steps, subscribe (whose deadline ends once subscribed) and info (its own).
@pytest.mark.parametrize("args", [
    ["get", "1"],
    ["namespace-set", "--identity", "{identity}", "1", "-"],
    ["subscribe", "1"],
    ["info", "--timeout", "0.9"],  # a ping and the query: one round trip each
], ids=lambda args: args[0])
async def test_timeout_bounds_a_whole_one_shot_command_on_a_slow_network(
        tmp_path: Path, args: list[str]) -> None:
    # Each network step fits in the timeout; all of them together do not. namespace-set makes
    # five round trips (join, read, write), so it took twice its timeout when each step had
    # the whole of it; subscribe, subscribed after four, then waited for messages for ever.
    identity = tmp_path / "me.key"
    Identity.generate().save(identity)
    args = [arg.replace("{identity}", str(identity)) for arg in args]
    loop = asyncio.get_running_loop()
    async with Peer("127.0.0.1", 0) as node:
        transport, link = await loop.create_datagram_endpoint(
            lambda: SlowLink(node.address, ONE_WAY), local_addr=("127.0.0.1", 0))
        where = "127.0.0.1:{}".format(transport.get_extra_info("sockname")[1])
        options = (["--node", where] if args[0] == "info" else
                   ["--bootstrap", where, "--timeout", str(DEADLINE)])
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "qadom", *args, *options, cwd=ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                out, err = await asyncio.wait_for(proc.communicate(b"value"), RUN_TIMEOUT)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            ended = loop.time()
        finally:
            transport.close()
    assert proc.returncode is not None
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    expected = {
        "info": f"{where} did not send its summary within 0.9 s",
        "subscribe": f"could not subscribe to topic 1 within {DEADLINE:g} s",
    }.get(args[0], f"{args[0]} did not complete within {DEADLINE:g} s")
    # A machine slow enough to spend the slack of the join's two round trips ends it there.
    slow = {"info": f"no node answered at {where}"}.get(
        args[0], f"could not join through {where} within {DEADLINE:g} s")
    assert result.returncode == 1
    assert one_line_error(result) in (expected, slow)
    assert link.first is not None
    timeout = 0.9 if args[0] == "info" else DEADLINE
    assert ended - link.first < timeout + EXIT_MARGIN


# ----------------------------------------------------------------------------- info


def test_info_reports_the_node_as_json_and_as_text(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    value = random.randbytes(100)
    assert qadom("set", "-", "--bootstrap", b.address, stdin=value).returncode == 0
    result = qadom("info", "--node", b.address, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["id"] == str(b.id)
    assert summary["address"] == b.address
    assert summary["client_only"] is False
    assert summary["contacts"] >= 1  # A, which answered B's bootstrap
    assert summary["buckets"]["count"] == len(summary["buckets"]["fill"]) >= 1
    assert sum(summary["buckets"]["fill"]) == summary["contacts"]
    assert summary["store"]["values"] >= 1
    assert summary["store"]["value_bytes"] >= 100
    assert summary["uptime"] >= 0
    text = qadom("info", "--node", a.address)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.decode().splitlines()
    assert lines[0].split() == ["id", str(a.id)]
    assert lines[1].split() == ["address", a.address]
    assert any(line.startswith("contacts") for line in lines)
    assert any(line.startswith("values") and "bytes" in line for line in lines)


def test_info_without_a_node_fails_with_one_line() -> None:
    where = closed_port()
    result = qadom("info", "--node", where, "--timeout", "2")
    assert result.returncode == 1
    assert one_line_error(result) == f"no node answered at {where}"


def test_info_refuses_a_node_that_is_not_local() -> None:
    result = qadom("info", "--node", "192.0.2.1:9999")
    assert result.returncode == 2
    assert "loopback" in one_line_error(result)


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["serve", "set", "get", "append", "search", "info"])
def test_every_command_has_help_with_examples(command: str) -> None:
    result = qadom(command, "--help")
    assert result.returncode == 0
    out = result.stdout.decode()
    assert f"usage: qadom {command}" in out
    assert f"\nexamples:\n  qadom {command}" in out


def test_no_command_is_a_usage_error() -> None:
    result = qadom()
    assert result.returncode == 2
    assert "COMMAND" in one_line_error(result)


# ----------------------------------------------------------------------------- serve --data-dir


def test_serve_with_a_data_dir_restarts_as_the_same_node_and_rejoins(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, _ = nodes
    data = tmp_path / "c"
    first = start_serve("--data-dir", str(data), "--bootstrap", a.address,
                        stderr=tmp_path / "c1.log")
    try:
        wait_for_log(first, f"joined through {a.address};")
        twin = qadom("serve", "--port", "0", "--data-dir", str(data), timeout=START_TIMEOUT)
        assert twin.returncode == 2
        assert "is in use by another qadom" in one_line_error(twin)
        value = random.randbytes(64)
        stored = qadom("set", "-", "--bootstrap", first.address, stdin=value)
        assert stored.returncode == 0, stored.stderr
    finally:
        assert stop(first.proc) == 0
    again = start_serve("--data-dir", str(data), stderr=tmp_path / "c2.log")
    try:
        assert again.id == first.id
        wait_for_log(again, "rejoined through saved contacts")
        info = json.loads(qadom("info", "--node", again.address, "--json").stdout)
        assert info["contacts"] >= 1
        assert info["store"]["values"] >= 1
    finally:
        stop(again.proc)


@pytest.mark.parametrize("flags", [[], ["--memory"], ["--data-dir", ""]])
def test_serve_keeps_data_in_the_user_data_dir_unless_in_memory(
        tmp_path: Path, flags: list[str]) -> None:
    # XDG_DATA_HOME points the per-user data directory into tmp_path (platformdirs on Linux).
    home = tmp_path / "data-home"
    node = start_serve(*flags, stderr=tmp_path / "serve.log", env={"XDG_DATA_HOME": str(home)})
    try:
        wait_for_log(node, "data in ")
    finally:
        assert stop(node.proc) == 0
    if flags:
        assert "data in memory only" in node.stderr.read_text()
        assert not home.exists()
    else:
        assert (home / "qadom" / "qadom.sqlite3").is_file()


@pytest.mark.parametrize("port", ["70000", "-1", "http", "²", "٢١٠٠٠", "1e3", " 80"])
def test_out_of_range_ports_are_usage_errors(port: str) -> None:
    for option in ("--port", "--http-port"):
        result = qadom("serve", "--memory", option, port)
        assert result.returncode == 2
        assert one_line_error(result) == (
            f"argument {option}: port must be an integer in [0, 65535], not {port!r} "
            "(see 'qadom serve --help')")


# ----------------------------------------------------------------------------- addresses and hosts


def test_parse_address_accepts_host_port_and_bracketed_ipv6() -> None:
    assert parse_address("127.0.0.1:9999") == ("127.0.0.1", 9999)
    assert parse_address("[::1]:9999") == ("::1", 9999)
    assert parse_address("::1:9999") == ("::1", 9999)  # the port follows the last colon
    assert parse_address("localhost:1") == ("localhost", 1)
    assert parse_address("bücher.example:65535") == ("bücher.example", 65535)


@pytest.mark.parametrize("text", [
    "127.0.0.1:٢١٠٠٠",  # Arabic-Indic digits: str.isdigit() says yes, a port they are not
    "127.0.0.1:²", "[::1:21000", "::1]:21000", "[[::1]]:1", "[]:1", "[::1]21000", ":1", "host:",
    "host", "host:0", "host:65536", "host:+1", "host: 1", "host:1 ", "host:000001", "a..b:1",
    "::1", "2001:db8::1", "::ffff:1.2.3.4",  # IPv6 addresses with no port after them
])
def test_parse_address_refuses_loose_spellings(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_address(text)


def test_parse_port_takes_ascii_digits_only() -> None:
    assert parse_port("0") == 0
    assert parse_port("65535") == 65535
    for text in ["²", "٢", "65536", "-1", "+1", " 1", "", "1e3", "0x10", "100000"]:
        with pytest.raises(argparse.ArgumentTypeError, match="port must be an integer"):
            parse_port(text)


@pytest.mark.parametrize(("args", "host"), [
    (["get", "1", "--bootstrap", "a..b:9"], "a..b"),
    (["get", "1", "--bootstrap", "[::1:9"], None),
    (["search", "1", "--bootstrap", f"{'a' * 64}.example:9"], f"{'a' * 64}.example"),
    (["append", "1", "2", "--bootstrap", ".example:9"], ".example"),
    (["info", "--node", "a..b:9"], "a..b"),
    (["serve", "--port", "0", "--memory", "--host", "a..b"], "a..b"),
    (["serve", "--port", "0", "--memory", "--http-port", "0", "--http-host", "a..b"], "a..b"),
])
def test_malformed_hosts_are_usage_errors_naming_the_host(
        args: list[str], host: str | None) -> None:
    # Refused while parsing (as a resolver would: an empty label, one over 63 characters), so
    # nothing binds or joins.
    result = qadom(*args)
    assert result.returncode == 2
    reason = one_line_error(result)
    assert reason.startswith("argument --")
    assert f"(see 'qadom {args[0]} --help')" in reason
    if host is not None:
        assert f"cannot resolve {host!r}" in reason


def last_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The reason of a ``serve`` that failed after it started (stderr holds its log lines too)."""
    lines = result.stderr.decode().splitlines()
    assert lines and lines[-1].startswith("qadom: "), result.stderr
    assert "Traceback" not in result.stderr.decode()
    return lines[-1][len("qadom: "):]


@pytest.mark.parametrize("option", ["--host", "--http-host"])
def test_serve_names_a_host_that_does_not_resolve(option: str) -> None:
    result = qadom("serve", "--port", "0", "--memory", "--http-port", "0", option, "999.1.1.1")
    assert result.returncode == 2
    assert last_error_line(result).startswith("cannot resolve '999.1.1.1': ")
    # Before, a bad --http-host failed after "qadom serving on ..." was printed.
    assert result.stdout == b""


def test_serve_with_an_http_host_but_no_http_port_is_a_usage_error() -> None:
    # Without --http-port no HTTP helper runs: --http-host alone would be silently ignored.
    result = qadom("serve", "--port", "0", "--memory", "--http-host", "127.0.0.1", timeout=15)
    assert result.returncode == 2
    assert one_line_error(result).startswith("--http-host needs --http-port")


# ----------------------------------------------------------------------------- serve's failures


def test_serve_on_a_busy_udp_port_says_the_address_is_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        result = qadom("serve", "--port", str(port), "--memory")
    assert result.returncode == 1
    assert one_line_error(result) == (
        f"cannot bind UDP on 127.0.0.1:{port}: {os.strerror(errno.EADDRINUSE)}")


def test_serve_on_a_busy_http_port_says_the_address_is_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = qadom("serve", "--port", "0", "--memory", "--http-port", str(port))
    assert result.returncode == 1
    assert last_error_line(result) == (
        f"cannot bind HTTP on 127.0.0.1:{port}: {os.strerror(errno.EADDRINUSE)}")
    # A script waiting for "qadom serving on" must not take the node for up. Before, that line
    # came before the HTTP helper was bound.
    assert result.stdout == b""


def test_serve_names_its_http_address_next_to_its_udp_address_once_both_listen(
        tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        # Unbuffered: each readline takes one line off the pipe, so select sees the next one.
        proc = subprocess.Popen(
            [sys.executable, "-m", "qadom", "serve", "--port", "0", "--memory", "--http-port",
             "0"], stdout=subprocess.PIPE, stderr=err, cwd=ROOT, bufsize=0)
    try:
        assert proc.stdout is not None
        lines = [_read_line(proc.stdout, START_TIMEOUT) for _ in range(2)]
        assert re.fullmatch(r"qadom serving on 127\.0\.0\.1:\d+ id \d+\n", lines[0]), lines
        match = re.fullmatch(r"qadom http on 127\.0\.0\.1:(\d+)\n", lines[1])
        assert match, (lines, log.read_text())
        # Already listening: the line comes once the helper is bound.
        with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=10):
            pass
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()


@pytest.mark.parametrize("below", [False, True])
def test_serve_with_a_data_dir_that_is_a_file_says_so(tmp_path: Path, below: bool) -> None:
    file = tmp_path / "file"
    file.write_bytes(b"")
    data_dir = file / "sub" if below else file
    result = qadom("serve", "--port", "0", "--data-dir", str(data_dir))
    assert result.returncode == 2
    what = repr(str(file)) if below else "it"
    assert one_line_error(result) == (
        f"cannot use data dir {str(data_dir)!r}: {what} is not a directory")


def test_serve_names_the_file_in_the_data_dir_it_cannot_open(tmp_path: Path) -> None:
    lock = tmp_path / "peer.lock"
    lock.mkdir()
    result = qadom("serve", "--port", "0", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert one_line_error(result) == (
        f"cannot use data dir {str(tmp_path)!r}: {str(lock)!r}: {os.strerror(errno.EISDIR)}")


# Root may create files where the mode forbids it: as root, the command runs without the
# capabilities that allow that (setpriv, of util-linux).
_AS_USER = (["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
            if os.geteuid() == 0 else [])


@pytest.mark.skipif(bool(_AS_USER) and shutil.which("setpriv") is None,
                    reason="root without setpriv may create files where the mode forbids it")
def test_serve_names_the_file_it_may_not_create_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o500)
    try:
        result = subprocess.run(
            [*_AS_USER, sys.executable, "-m", "qadom", "serve", "--port", "0", "--data-dir",
             str(data_dir)], capture_output=True, timeout=RUN_TIMEOUT, cwd=ROOT, check=False)
    finally:
        data_dir.chmod(0o700)
    assert result.returncode == 2
    assert one_line_error(result) == (
        f"cannot use data dir {str(data_dir)!r}: {str(data_dir / 'peer.lock')!r}: "
        f"{os.strerror(errno.EACCES)}")


def test_an_extra_argument_points_to_the_commands_help() -> None:
    result = qadom("append", "1", "2", "3")
    assert result.returncode == 2
    assert one_line_error(result) == (
        "unrecognized arguments: 3 (see 'qadom append --help')")


def test_serve_whose_first_join_fails_exits_1_naming_the_addresses() -> None:
    # A UDP socket that never answers: the node's pings time out and the join fails.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        where = f"127.0.0.1:{silent.getsockname()[1]}"
        result = qadom("serve", "--port", "0", "--memory", "--bootstrap", where)
    assert result.returncode == 1
    assert last_error_line(result) == f"could not join: no node answered at {where}"


# A ``qadom serve`` whose first join never ends until cancelled (Peer.bootstrap replaced), so a
# signal is sure to arrive while it joins: it prints "joining" once the join has begun.
HANGING_JOIN = """
import asyncio, sys
from qadom import cli, peer

async def bootstrap(self, addresses=None):
    print("joining", flush=True)
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        print("join cancelled", file=sys.stderr, flush=True)
        raise

peer.Peer.bootstrap = bootstrap
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_at_once_when_signalled_during_its_first_join(
        tmp_path: Path, sig: signal.Signals) -> None:
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        # Unbuffered: each readline takes one line off the pipe, so select sees the next one.
        proc = subprocess.Popen(
            [sys.executable, "-c", HANGING_JOIN, "serve", "--port", "0", "--memory",
             "--bootstrap", "127.0.0.1:9"], stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
            bufsize=0)
    try:
        assert proc.stdout is not None
        assert _read_line(proc.stdout, START_TIMEOUT).startswith("qadom serving on ")
        assert _read_line(proc.stdout, START_TIMEOUT) == "joining\n"
        proc.send_signal(sig)
        # Before the stop cancelled the join, this process never ended (its join never does).
        code = proc.wait(timeout=10)
    finally:
        stop(proc, signal.SIGKILL)
    text = log.read_text()
    assert code == 0, text
    assert "join cancelled" in text and "shutting down" in text


# ----------------------------------------------------------------------------- closed stdin, stdout


def qadom_closing(redirection: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``qadom ARGS`` run with standard fds closed by ``redirection`` (``<&-``, ``>&-``)."""
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {redirection}', "sh", sys.executable, "-m", "qadom", *args],
        capture_output=True, timeout=RUN_TIMEOUT, cwd=ROOT, check=False)


@pytest.mark.parametrize("command", ["get", "search"])
def test_a_command_whose_reader_has_gone_dies_of_sigpipe_silently(
        nodes: tuple[Node, Node], command: str) -> None:
    a, _ = nodes
    value = random.randbytes(32)
    key = str(key_for(value))
    assert qadom("set", "-", "--bootstrap", a.address, stdin=value).returncode == 0
    assert qadom("append", key, "7", "--bootstrap", a.address).returncode == 0
    # `true` has exited long before qadom writes: its write finds a pipe without a reader. As
    # for cat or yes, the shell then reports SIGPIPE, 128 + 13 (it was a silent 1 before).
    result = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | true; echo "$?"', "bash",
         sys.executable, "-m", "qadom", command, key, "--bootstrap", a.address],
        capture_output=True, timeout=RUN_TIMEOUT, cwd=ROOT, check=False)
    assert (result.stdout, result.stderr) == (f"{128 + signal.SIGPIPE}\n".encode(), b"")


def test_set_with_stdin_closed_is_a_usage_error() -> None:
    # Before the fix, uvloop aborted the process (exit 134) on closing a socket numbered 0.
    result = qadom_closing("<&-", "set", "-", "--bootstrap", "127.0.0.1:9")
    assert result.returncode == 2
    assert one_line_error(result) == "cannot read stdin: it is closed"


@pytest.mark.parametrize("args", [
    ["set", "-", "--bootstrap", "127.0.0.1:9"],
    ["get", "1", "--bootstrap", "127.0.0.1:9"],
    ["search", "1234", "--bootstrap", "127.0.0.1:9"],
    ["info", "--node", "127.0.0.1:9"],
    # serve prints the addresses it serves on: before, it bound its sockets, then failed to
    # print them with "unexpected error: AttributeError".
    ["serve", "--port", "0", "--memory"],
    ["serve", "--port", "0", "--memory", "--http-port", "0"],
])
def test_a_command_with_stdout_closed_fails_before_doing_anything(args: list[str]) -> None:
    result = qadom_closing(">&-", *args)
    assert result.returncode == 1
    assert one_line_error(result) == "cannot write stdout: it is closed"


def test_get_into_a_file_works_with_stdin_and_stdout_closed(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, _ = nodes
    value = random.randbytes(32)
    assert qadom("set", "-", "--bootstrap", a.address, stdin=value).returncode == 0
    out = tmp_path / "value.bin"
    result = qadom_closing("<&- >&-", "get", str(key_for(value)), "-o", str(out),
                           "--bootstrap", a.address)
    assert (result.returncode, result.stderr) == (0, b"")
    assert out.read_bytes() == value


def test_serve_with_stdin_closed_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            ["sh", "-c", 'exec "$@" <&-', "sh", sys.executable, "-m", "qadom", "serve",
             "--port", "0", "--memory"], stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert _read_line(proc.stdout, START_TIMEOUT).startswith("qadom serving on ")
    finally:
        code = stop(proc)  # SIGTERM
    assert code == 0, log.read_text()
    assert "shutting down" in log.read_text()


def test_serve_on_ipv6_names_its_address_with_brackets(tmp_path: Path) -> None:
    """`[::1]:PORT`, as `qadom info` and `--bootstrap` write an IPv6 address."""
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "qadom", "serve", "--host", "::1",
                                 "--port", "0", "--memory"], stdout=subprocess.PIPE, stderr=err,
                                cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = _read_line(proc.stdout, START_TIMEOUT)
    finally:
        code = stop(proc)
    assert re.match(r"qadom serving on \[::1\]:\d+ id \d+$", line), (line, log.read_text())
    assert code == 0


async def test_an_http_helper_whose_data_dir_refuses_its_key_names_the_store(
        tmp_path: Path) -> None:
    """`serve --http-port` on a data dir that cannot be written (the HTTP helper keeps its signing
    key there): the error names the store, not a socket that could not be bound."""
    args = cli.parse_args(cli.build_parser(), ["serve", "--http-port", "0"])
    peer = Peer("127.0.0.1", 0, data_dir=str(tmp_path))
    await peer.start()
    try:
        store = peer.node.store
        assert isinstance(store, SqliteStore)
        store._db.execute("PRAGMA query_only = 1")  # refuses writes as a read-only disk does
        with pytest.raises(StorageUnavailable) as info:
            await cli._start_http(peer, args)
        assert str(info.value).startswith("cannot start the HTTP helper: ")
        assert "bind" not in str(info.value)
    finally:
        await peer.close()


# ----------------------------------------------------------------------------- a full stdout

FULL = Path("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not FULL.exists(), reason="no /dev/full here")


def qadom_into_full(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``qadom ARGS > /dev/full``."""
    with FULL.open("wb") as full:
        return subprocess.run([sys.executable, "-m", "qadom", *args], input=stdin, stdout=full,
                              stderr=subprocess.PIPE, timeout=RUN_TIMEOUT, cwd=ROOT, check=False)


@dataclass
class Stored:
    """What the commands of the full-stdout test find: a value, an entry under its key, and a
    namespace record of ``identity`` under it."""

    value: bytes
    key: str
    identity: Path
    public_key: str


@pytest.fixture(scope="module")
def stored(nodes: tuple[Node, Node], tmp_path_factory: pytest.TempPathFactory) -> Stored:
    a, _ = nodes
    value = random.randbytes(32)
    key = str(key_for(value))
    assert qadom("set", "-", "--bootstrap", a.address, stdin=value).returncode == 0
    assert qadom("append", key, "7", "--bootstrap", a.address).returncode == 0
    identity = tmp_path_factory.mktemp("identity") / "me.key"
    public_key = qadom("keygen", str(identity)).stdout.decode().strip()
    assert qadom("namespace-set", "--identity", str(identity), key, "-", "--bootstrap",
                 a.address, stdin=value).returncode == 0
    return Stored(value, key, identity, public_key)


@needs_dev_full
@pytest.mark.parametrize("command", ["set", "get", "search", "publish", "info", "keygen",
                                     "namespace-set", "namespace-get", "serve"])
def test_a_command_whose_stdout_is_full_says_it_cannot_write_stdout(
        nodes: tuple[Node, Node], stored: Stored, tmp_path: Path, command: str) -> None:
    a, _ = nodes
    value, key, identity, public_key = (stored.value, stored.key, stored.identity,
                                        stored.public_key)
    joining = ["--bootstrap", a.address]
    args = {
        "set": ["set", "-", *joining],
        "get": ["get", key, *joining],
        "search": ["search", key, *joining],
        "publish": ["publish", key, "-", *joining],
        "info": ["info", "--node", a.address],
        "keygen": ["keygen", str(tmp_path / "other.key")],
        "namespace-set": ["namespace-set", "--identity", str(identity), key, "-", *joining],
        "namespace-get": ["namespace-get", public_key, key, *joining],
        "serve": ["serve", "--port", "0", "--memory"],
    }[command]
    result = qadom_into_full(*args, stdin=value)
    # Before: "qadom: No space left on device", without saying what could not be written.
    err = result.stderr.decode()
    assert result.returncode == 1, err
    line = "qadom: cannot write stdout: No space left on device\n"
    # serve logs its start before; the others write one line, that one.
    assert err.endswith(line) if command == "serve" else err == line, err


@needs_dev_full
def test_a_subscriber_whose_stdout_is_full_says_it_cannot_write_stdout(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, b = nodes
    topic = random_key()
    log = tmp_path / "sub.log"
    with FULL.open("wb") as full:
        proc = start_subscriber(topic, "--bootstrap", a.address, log=log, stdout=full)
    try:
        sent = qadom("publish", topic, "-", "--bootstrap", b.address, stdin=b"hello")
        assert sent.returncode == 0, sent.stderr
        code = proc.wait(timeout=15)
    finally:
        stop(proc, signal.SIGKILL)
    assert code == 1, log.read_text()
    assert log.read_text().splitlines()[-1] == (
        "qadom: cannot write stdout: No space left on device")
