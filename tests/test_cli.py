"""The ``qadom`` command end to end: real ``qadom serve`` processes on 127.0.0.1 (port 0), each
one-shot command run as its own process, its exit status, stdout bytes and stderr line checked.

Two nodes serve the whole module (B joined through A), so most tests cost one short process.
Every process is bounded by a timeout and killed in a ``finally``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from qadom.cli import parse_id
from qadom.ids import key_for

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
        wait_for_log(b, "joined through 1 address(es)")
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
        wait_for_log(first, "joined through 1 address(es)")
        twin = qadom("serve", "--port", "0", "--data-dir", str(data), timeout=START_TIMEOUT)
        assert twin.returncode == 2
        assert "in use by another qadom node" in one_line_error(twin)
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


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_out_of_range_ports_are_usage_errors(port: str) -> None:
    for option in ("--port", "--http-port"):
        result = qadom("serve", "--memory", option, port)
        assert result.returncode == 2 and b"port" in result.stderr
