"""The ``qadom`` commands for signed namespaces and publish/subscribe, end to end: ``keygen``,
``namespace-set``, ``namespace-get``, ``publish`` and ``subscribe`` run as their own processes
against real ``qadom serve --port 0 --memory`` nodes on 127.0.0.1; their exit status, stdout bytes
and stderr line checked. Every process is bounded by a timeout and killed in a ``finally``; a
subscriber is known to be registered when it logs so (``--log-level info``), never after a sleep.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import fcntl
import io
import json
import os
import random
import re
import signal
import socket
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from test_cli import (
    HANGING_JOIN,
    ROOT,
    RUN_TIMEOUT,
    START_TIMEOUT,
    Node,
    _read_line,
    closed_port,
    one_line_error,
    qadom,
    start_serve,
    start_subscriber,
    stop,
    wait_for_log,
)

from qadom import Identity, Peer, cli
from qadom.cli import parse_address, parse_count, parse_public_key
from qadom.subscription import Subscription


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    """Nodes A and B in memory, B joined through A."""
    tmp = tmp_path_factory.mktemp("cli-services")
    started: list[Node] = []
    try:
        a = start_serve("--memory", stderr=tmp / "a.log")
        started.append(a)
        b = start_serve("--memory", "--bootstrap", a.address, stderr=tmp / "b.log")
        started.append(b)
        wait_for_log(b, f"joined through {a.address};")
        yield a, b
    finally:
        for node in started:
            stop(node.proc)


def keygen(path: Path, *extra: str) -> str:
    """A new identity in ``path``; its public key as printed."""
    made = qadom("keygen", str(path), *extra)
    assert (made.returncode, made.stderr) == (0, b""), made.stderr
    return made.stdout.decode().removesuffix("\n")


# ----------------------------------------------------------------------------- keygen


def test_keygen_saves_an_owner_only_identity_and_prints_its_public_key(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    public = keygen(path)
    assert len(public) == 64 and int(public, 16) >= 0
    assert Identity.load(path).public_key.hex() == public
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keygen_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    first = keygen(path)
    saved = path.read_bytes()
    refused = qadom("keygen", str(path))
    assert refused.returncode == 2
    assert one_line_error(refused) == f"{str(path)!r} exists: give --force to replace it"
    assert path.read_bytes() == saved
    second = keygen(path, "--force")
    assert second != first
    assert Identity.load(path).public_key.hex() == second


def test_keygen_into_a_missing_directory_fails_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "me.key"
    result = qadom("keygen", str(path))
    assert result.returncode == 1
    assert one_line_error(result).startswith(f"cannot write {str(path)!r}: ")
    assert not path.parent.exists()


@pytest.mark.parametrize("target", [".", "directory"])
def test_keygen_forced_onto_a_directory_fails_with_one_line(tmp_path: Path, target: str) -> None:
    where = tmp_path / "directory"
    where.mkdir()
    path = target if target == "." else str(where)
    result = subprocess.run([sys.executable, "-m", "qadom", "keygen", path, "--force"],
                            capture_output=True, timeout=RUN_TIMEOUT, cwd=where, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2  # a bad argument, as any FILE that is not a file
    assert one_line_error(result) == f"{path!r} is a directory: keygen writes only a file"
    assert list(where.iterdir()) == []


@pytest.mark.parametrize("kind", ["pipe", "link"])
def test_keygen_forced_onto_what_is_not_a_file_changes_nothing(tmp_path: Path, kind: str) -> None:
    """A device, a pipe or a symbolic link stays what it is: --force replaces a file."""
    path = tmp_path / "target"
    kept = tmp_path / "kept.key"
    if kind == "pipe":
        os.mkfifo(path)
    else:
        saved = keygen(kept)
        path.symlink_to(kept)
    result = qadom("keygen", str(path), "--force")
    assert result.returncode == 2
    assert one_line_error(result) == (
        f"{str(path)!r} is not a regular file: keygen replaces only a file")
    mode = path.lstat().st_mode
    assert stat.S_ISFIFO(mode) if kind == "pipe" else stat.S_ISLNK(mode)
    if kind == "link":
        assert Identity.load(kept).public_key.hex() == saved


@pytest.mark.parametrize("kind", ["directory", "dangling link"])
@pytest.mark.parametrize("force", [[], ["--force"]])
async def test_keygen_onto_what_force_cannot_replace_says_so_with_or_without_force(
        tmp_path: Path, kind: str, force: list[str]) -> None:
    """The refusal --force would meet anyway, not a hint to give --force."""
    path = tmp_path / "target"
    if kind == "directory":
        path.mkdir()
        reason = f"{str(path)!r} is a directory: keygen writes only a file"
    else:
        path.symlink_to(tmp_path / "nowhere")
        reason = f"{str(path)!r} is not a regular file: keygen replaces only a file"
    args = cli.parse_args(cli.build_parser(), ["keygen", str(path), *force])
    with pytest.raises(cli.CommandLineError) as refused:
        await cli._keygen(args)
    # Before, without --force: "exists: give --force to replace it", then this with it.
    assert str(refused.value) == reason
    assert sorted(tmp_path.iterdir()) == [path]
    assert path.is_dir() if kind == "directory" else not path.exists() and path.is_symlink()


# ----------------------------------------------------------------------------- namespaces


def test_namespace_set_signs_the_next_seq_and_namespace_get_writes_the_newest_value(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, b = nodes
    identity = tmp_path / "me.key"
    public = keygen(identity)
    key = random.getrandbits(256)
    first = b"\x00v1\r\n\xff" + random.randbytes(8)
    stored = qadom("namespace-set", "--identity", str(identity), str(key), "-",
                   "--bootstrap", a.address, stdin=first)
    assert (stored.returncode, stored.stdout, stored.stderr) == (0, b"0\n", b""), stored.stderr
    second = random.randbytes(8192)
    source = tmp_path / "v2.bin"
    source.write_bytes(second)
    stored = qadom("namespace-set", "--identity", str(identity), hex(key), str(source),
                   "--bootstrap", b.address)
    assert (stored.returncode, stored.stdout, stored.stderr) == (0, b"1\n", b""), stored.stderr
    fetched = qadom("namespace-get", public.upper(), str(key), "--bootstrap", a.address)
    assert (fetched.returncode, fetched.stderr) == (0, b""), fetched.stderr
    assert fetched.stdout == second
    out = tmp_path / "out.bin"
    fetched = qadom("namespace-get", public, hex(key), "-o", str(out), "--bootstrap", b.address)
    assert (fetched.returncode, fetched.stdout, fetched.stderr) == (0, b"", b"")
    assert out.read_bytes() == second


async def test_namespace_set_past_the_last_seq_fails_with_one_line(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, _ = nodes
    path = tmp_path / "me.key"
    keygen(path)
    owner = Identity.load(path)
    key = random.getrandbits(256)
    last = 2**63 - 1
    # A client, as the command's own peer: a peer that leaves the nodes' routing tables
    # behind it would slow every later test's lookups.
    async with Peer("127.0.0.1", 0, client_only=True) as peer:
        await asyncio.wait_for(peer.bootstrap([parse_address(a.address)]), RUN_TIMEOUT)
        await peer.namespace_set(owner.public_key, owner.sign(key, b"last", last), key,
                                 b"last", last)
    result = await asyncio.to_thread(qadom, "namespace-set", "--identity", str(path), str(key),
                                     "-", "--bootstrap", a.address, stdin=b"next")
    assert result.returncode == 1
    assert one_line_error(result) == (
        f"key 0x{key:064x} holds the highest seq, {last}: no newer version can be signed")


def test_namespace_get_of_a_missing_key_says_not_found(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, _ = nodes
    public = Identity.generate().public_key.hex()
    out = tmp_path / "never.bin"
    missing = qadom("namespace-get", public, "7", "-o", str(out), "--bootstrap", a.address)
    assert missing.returncode == 1
    assert one_line_error(missing) == (
        f"not found: no node reached holds key 7 in namespace {public}")
    assert not out.exists()


@pytest.mark.parametrize("problem", ["missing", "garbage", "directory", "device"])
def test_namespace_set_with_a_bad_identity_file_is_a_usage_error(
        tmp_path: Path, problem: str) -> None:
    path = {"missing": tmp_path / "none.key", "garbage": tmp_path / "garbage.key",
            "directory": tmp_path, "device": Path("/dev/zero")}[problem]
    (tmp_path / "garbage.key").write_text("not hex at all\n")
    # Refused before joining: the bootstrap address is never asked.
    result = qadom("namespace-set", "--identity", str(path), "1", "-",
                   "--bootstrap", closed_port(), stdin=b"v")
    assert result.returncode == 2
    reason = one_line_error(result)
    if problem == "missing":
        assert reason == f"cannot read identity file {str(path)!r}: No such file or directory"
    else:
        assert reason.startswith(f"{str(path)!r} is not a qadom identity file"), reason


def test_namespace_set_of_a_value_too_large_is_a_usage_error(tmp_path: Path) -> None:
    identity = tmp_path / "me.key"
    Identity.generate().save(identity)
    result = qadom("namespace-set", "--identity", str(identity), "1", "-",
                   "--bootstrap", closed_port(), stdin=random.randbytes(8193))
    assert result.returncode == 2
    reason = one_line_error(result)
    assert "too large" in reason and "8192" in reason


def test_without_a_node_each_command_fails_with_one_line(tmp_path: Path) -> None:
    identity = tmp_path / "me.key"
    Identity.generate().save(identity)
    where = closed_port()
    commands = [["namespace-set", "--identity", str(identity), "1", "-"],
                ["namespace-get", "ab" * 32, "1"], ["publish", "1", "-"], ["subscribe", "1"]]
    # Side by side: each waits out its pings of the closed port.
    procs = [subprocess.Popen([sys.executable, "-m", "qadom", *args, "--bootstrap", where],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=ROOT) for args in commands]
    try:
        results = [subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
                   for proc in procs
                   for out, err in [proc.communicate(timeout=RUN_TIMEOUT)]]
    finally:
        for proc in procs:
            stop(proc, signal.SIGKILL)
    for args, result in zip(commands, results, strict=True):
        assert result.returncode == 1, args
        assert one_line_error(result) == f"no node answered at {where}", args


def test_a_public_key_other_than_64_hex_digits_is_a_usage_error() -> None:
    result = qadom("namespace-get", "0x" + "ab" * 31, "1", "--bootstrap", "127.0.0.1:9")
    assert result.returncode == 2
    assert one_line_error(result) == (
        f"argument PUBLIC_KEY: expected an ed25519 public key as 64 hex digits, got "
        f"'0x{'ab' * 31}' (see 'qadom namespace-get --help')")


def test_parse_public_key_takes_exactly_64_hex_digits() -> None:
    key = Identity.generate().public_key
    assert parse_public_key(key.hex()) == parse_public_key(key.hex().upper()) == key
    for text in ["ab" * 31 + "a", "ab" * 32 + "a", "0x" + "ab" * 31, "zz" * 32,
                 "ab" * 31 + " a", " " + "ab" * 32, "", "٣" * 64]:
        with pytest.raises(argparse.ArgumentTypeError, match="64 hex digits"):
            parse_public_key(text)


# A ``qadom`` whose namespace reads never see the stored record, as when another writer keeps
# storing newer versions between each read and the set that follows it.
READS_MISS = """
import sys
from qadom import cli, peer
from qadom.errors import NotFoundError

async def namespace_get_record(self, public_key, key):
    raise NotFoundError("not found")

peer.Peer.namespace_get_record = namespace_get_record
sys.exit(cli.main(sys.argv[1:]))
"""


async def test_namespace_set_follows_another_writers_seq_and_fails_with_one_line_when_stale(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, _ = nodes
    path = tmp_path / "me.key"
    keygen(path)
    owner = Identity.load(path)
    key = random.getrandbits(256)
    async with Peer("127.0.0.1", 0, client_only=True) as peer:  # another writer, same key
        await asyncio.wait_for(peer.bootstrap([parse_address(a.address)]), RUN_TIMEOUT)
        await peer.namespace_set(owner.public_key, owner.sign(key, b"five", 5), key, b"five", 5)
    after = await asyncio.to_thread(qadom, "namespace-set", "--identity", str(path), str(key),
                                    "-", "--bootstrap", a.address, stdin=b"six")
    assert (after.returncode, after.stdout, after.stderr) == (0, b"6\n", b""), after.stderr
    # Each seq it signs (0, 1, 2: its reads miss seq 6) is refused as stale.
    stale = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", READS_MISS, "namespace-set", "--identity",
                         str(path), str(key), "-", "--bootstrap", a.address],
        input=b"old", capture_output=True, timeout=RUN_TIMEOUT, cwd=ROOT, check=False)
    assert stale.returncode == 1
    assert one_line_error(stale) == (
        f"key 0x{key:064x} kept moving ahead: gave up after 3 tries")
    got = await asyncio.to_thread(qadom, "namespace-get", owner.public_key.hex(), str(key),
                                  "--bootstrap", a.address)
    assert got.stdout == b"six"


def test_a_join_that_runs_out_of_time_fails_with_one_line_within_the_timeout(
        tmp_path: Path) -> None:
    identity = tmp_path / "me.key"
    Identity.generate().save(identity)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # receives, never answers
        silent.bind(("127.0.0.1", 0))
        where = f"127.0.0.1:{silent.getsockname()[1]}"
        began = time.monotonic()
        result = qadom("namespace-set", "--identity", str(identity), "1", "-",
                       "--bootstrap", where, "--timeout", "0.5", stdin=b"v")
        elapsed = time.monotonic() - began
    assert result.returncode == 1
    assert one_line_error(result) == f"could not join through {where} within 0.5 s"
    assert elapsed < 10  # start-up and the 0.5 s, on a loaded machine; the default is 30 s


# ----------------------------------------------------------------------------- publish/subscribe


def finish(proc: subprocess.Popen[bytes], sig: int | None = None) -> tuple[int, bytes]:
    """Exit status and stdout of ``proc``, after ``sig`` if given (killed if it lingers)."""
    try:
        if sig is not None:
            proc.send_signal(sig)
        out, _ = proc.communicate(timeout=15)
        return proc.returncode, out
    finally:
        stop(proc, signal.SIGKILL)


def test_subscribers_receive_exactly_count_messages_published_by_other_processes(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, b = nodes
    topic = str(random.getrandbits(256))
    values = [b"one\x00\n", random.randbytes(64), b""]
    # Client peers both: neither is in any node's routing table, yet the relays reach them.
    hexed = start_subscriber(topic, "--count", "3", "--hex", "--bootstrap", a.address,
                             log=tmp_path / "hex.log")
    raw = start_subscriber(topic, "--count", "1", "--bootstrap", b.address,
                           log=tmp_path / "raw.log")
    try:
        for value in values:
            sent = qadom("publish", topic, "-", "--bootstrap", b.address, stdin=value)
            assert (sent.returncode, sent.stdout, sent.stderr) == (0, b"2\n", b""), sent.stderr
        hex_code, hex_out = finish(hexed)
        raw_code, raw_out = finish(raw)
    finally:
        stop(hexed, signal.SIGKILL)
        stop(raw, signal.SIGKILL)
    assert hex_code == 0, (tmp_path / "hex.log").read_text()
    assert sorted(hex_out.decode().splitlines()) == sorted(value.hex() for value in values)
    assert hex_out.endswith(b"\n")
    assert raw_code == 0, (tmp_path / "raw.log").read_text()
    assert raw_out in [value + b"\n" for value in values]
    assert "Traceback" not in (tmp_path / "hex.log").read_text()


def test_subscribe_json_writes_each_message_as_exactly_one_line(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, b = nodes
    topic = str(random.getrandbits(256))
    values = [b"two\nlines\n", b"nul\x00and \xc3\xa9", b"\xff\xfe\n", b""]
    proc = start_subscriber(topic, "--count", str(len(values)), "--json",
                            "--bootstrap", a.address, log=tmp_path / "sub.log")
    try:
        for value in values:
            sent = qadom("publish", topic, "-", "--bootstrap", b.address, stdin=value)
            assert (sent.returncode, sent.stderr) == (0, b""), sent.stderr
        code, out = finish(proc)
    finally:
        stop(proc, signal.SIGKILL)
    assert code == 0, (tmp_path / "sub.log").read_text()
    lines = out.split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(values) + 1, out
    received = [json.loads(line) for line in lines[:-1]]
    expected = [{"text": "two\nlines\n"}, {"text": "nul\x00and \u00e9"}, {"hex": "fffe0a"},
                {"text": ""}]
    assert sorted(received, key=json.dumps) == sorted(expected, key=json.dumps)


def test_subscribe_takes_one_framing_at_most() -> None:
    result = qadom("subscribe", "1", "--hex", "--json", "--bootstrap", "127.0.0.1:9")
    assert result.returncode == 2
    assert one_line_error(result).startswith("argument --json: not allowed with argument --hex")


def test_a_subscriber_whose_reader_closes_the_pipe_unsubscribes_and_dies_of_sigpipe(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, b = nodes
    topic = str(random.getrandbits(256))
    log = tmp_path / "sub.log"
    proc = start_subscriber(topic, "--bootstrap", a.address, log=log)
    try:
        assert proc.stdout is not None
        sent = qadom("publish", topic, "-", "--bootstrap", b.address, stdin=b"first")
        assert (sent.returncode, sent.stdout) == (0, b"2\n"), sent.stderr
        assert _read_line(proc.stdout, START_TIMEOUT) == "first\n"
        proc.stdout.close()  # as `qadom subscribe ... | head -n 1` once head has its line
        # No message follows: the subscriber must see the pipe go without writing to it. It
        # used to wait, subscribed, for a message to fail to write.
        code = proc.wait(timeout=10)
    finally:
        stop(proc, signal.SIGKILL)
    assert code == -signal.SIGPIPE, log.read_text()
    assert "Traceback" not in log.read_text() and "qadom: " not in log.read_text()
    before = forwarded(a), forwarded(b)
    sent = qadom("publish", topic, "-", "--bootstrap", b.address, stdin=b"anyone?")
    assert (sent.returncode, sent.stdout) == (0, b"2\n"), sent.stderr
    assert (forwarded(a), forwarded(b)) == before  # it had unsubscribed from both relays


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_subscribe_stopped_by_a_signal_exits_0(
        nodes: tuple[Node, Node], tmp_path: Path, sig: signal.Signals) -> None:
    a, _ = nodes
    proc = start_subscriber(str(random.getrandbits(256)), "--bootstrap", a.address,
                            log=tmp_path / "sub.log")
    code, out = finish(proc, sig)
    log = (tmp_path / "sub.log").read_text()
    assert (code, out) == (0, b""), log
    assert "Traceback" not in log and "qadom: " not in log


def forwarded(node: Node) -> int:
    """How many messages ``node`` has forwarded to subscribers (``qadom info``)."""
    info = qadom("info", "--node", node.address, "--json")
    assert info.returncode == 0, info.stderr
    return int(json.loads(info.stdout)["stats"].get("pubsub_forwarded", 0))


def test_a_stopped_subscriber_has_unsubscribed_from_its_relays(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, b = nodes
    topic = str(random.getrandbits(256))
    proc = start_subscriber(topic, "--bootstrap", a.address, log=tmp_path / "sub.log")
    assert finish(proc, signal.SIGTERM) == (0, b"")
    before = forwarded(a), forwarded(b)
    sent = qadom("publish", topic, "-", "--bootstrap", b.address, stdin=b"anyone?")
    assert (sent.returncode, sent.stdout) == (0, b"2\n"), sent.stderr
    # A relay forwards before it answers the publish: had the subscriber left without
    # unsubscribing, each relay would have forwarded this message to it.
    assert (forwarded(a), forwarded(b)) == before


def pipe_held(pipe: int) -> tuple[int, int]:
    """How many bytes wait in the pipe read through ``pipe``, and how many it can hold."""
    held = int.from_bytes(fcntl.ioctl(pipe, termios.FIONREAD, b"\0" * 4), sys.byteorder)
    return held, fcntl.fcntl(pipe, fcntl.F_GETPIPE_SZ)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe sizes as Linux has them")
async def test_a_subscriber_whose_reader_lags_still_stops_at_once_on_sigterm(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, _ = nodes
    topic = random.getrandbits(256)
    log = tmp_path / "sub.log"
    proc = start_subscriber(str(topic), "--bootstrap", a.address, log=log)
    try:
        assert proc.stdout is not None
        pipe = proc.stdout.fileno()
        message = b"m" * 4095  # with its newline, one page of the pipe: it fills up exactly
        async with Peer("127.0.0.1", 0, client_only=True) as peer:
            await asyncio.wait_for(peer.bootstrap([parse_address(a.address)]), RUN_TIMEOUT)
            for _ in range(pipe_held(pipe)[1] // 4096 + 2):  # more than the pipe holds
                await asyncio.wait_for(peer.publish(topic, message), RUN_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while pipe_held(pipe)[0] < pipe_held(pipe)[1]:  # nobody reads: the subscriber's next
            assert proc.poll() is None, log.read_text()  # write is blocked
            assert time.monotonic() < deadline, pipe_held(pipe)
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        # A write blocked on the event loop kept it from ever seeing the signal (and from
        # answering its relays): the process stopped only once someone read the pipe.
        code = await asyncio.to_thread(proc.wait, 10)
    finally:
        stop(proc, signal.SIGKILL)
    assert code == 0, log.read_text()


ONE_WAITING = """
import functools, sys
from qadom import cli

# A subscription that keeps one message for a reader that lags, not 10 000.
cli.Config = functools.partial(cli.Config, pubsub_queue_size=1)
sys.exit(cli.main(sys.argv[1:]))
"""

DROPPED = re.compile(r"qadom: (\d+) (?:more )?messages? dropped(?: \((\d+) in all\))?: "
                     r"the reader of stdout fell behind")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe sizes as Linux has them")
async def test_a_subscriber_whose_reader_falls_behind_says_so_on_stderr(
        nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, _ = nodes
    topic = random.getrandbits(256)
    log = tmp_path / "sub.log"
    proc = start_subscriber(str(topic), "--json", "--bootstrap", a.address, log=log,
                            program=("-c", ONE_WAITING))
    try:
        assert proc.stdout is not None
        pages = pipe_held(proc.stdout.fileno())[1] // 4096
        # As one line of JSON, {"text": ...} and a newline, each message is one page of the
        # pipe, written whole (at most PIPE_BUF bytes): nobody reads, so the pipe takes `pages`
        # of them at most, one more may be being written and one wait in the subscription; it
        # drops the rest.
        values = [f"{i:05}".encode() + b"m" * 4078 for i in range(pages + 10)]
        async with Peer("127.0.0.1", 0, client_only=True) as peer:
            await asyncio.wait_for(peer.bootstrap([parse_address(a.address)]), RUN_TIMEOUT)
            for value in values:
                await asyncio.wait_for(peer.publish(topic, value), RUN_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not DROPPED.search(log.read_text()):  # within a second of the first drop
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.02)
        # Stopped, it tells what it dropped since its last warning, if anything.
        code, out = await asyncio.to_thread(finish, proc, signal.SIGTERM)
    finally:
        stop(proc, signal.SIGKILL)
    text = log.read_text()
    assert code == 0, text
    warned = [DROPPED.fullmatch(line) for line in text.splitlines() if line.startswith("qadom:")]
    assert warned and all(warned), text
    counts = [int(match[1]) for match in warned if match is not None]
    totals = [int(match[2] or match[1]) for match in warned if match is not None]
    assert totals == [sum(counts[:i + 1]) for i in range(len(counts))], text
    # stdout holds messages only, each one line of JSON, in order, and no message is both
    # written and told as dropped. (Not every message need be either: the last deliveries may
    # still be on their way to the subscriber when the signal comes, so their count is luck.)
    sent = [json.loads(line) for line in out.splitlines()]
    assert sent == [{"text": value.decode()} for value in values
                    if {"text": value.decode()} in sent]
    assert totals[-1] >= 1 and len(sent) + totals[-1] <= len(values), text


async def test_warnings_of_dropped_messages_are_spaced_out_and_the_rest_told_at_the_stop(
        capsys: pytest.CaptureFixture[str]) -> None:
    subscription = argparse.Namespace(dropped=0)  # stands for a Subscription
    warnings = cli._DroppedWarnings(check=0.001, gap=3600)
    watching = asyncio.ensure_future(warnings.watch(cast(Subscription, subscription)))
    try:
        subscription.dropped = 1
        await asyncio.wait_for(_told(warnings, 1), 10)
        # A reader that stays stuck loses more, checked many times over: no line until the gap
        # has passed.
        for _ in range(20):
            subscription.dropped += 5
            await asyncio.sleep(0.002)
        assert capsys.readouterr() == (
            "", "qadom: 1 message dropped: the reader of stdout fell behind\n")
    finally:
        watching.cancel()
    warnings.warn()  # as a stop or --count does
    warnings.warn()  # nothing new: nothing said
    assert capsys.readouterr() == (
        "", "qadom: 100 more messages dropped (101 in all): the reader of stdout fell behind\n")


async def _told(warnings: cli._DroppedWarnings, count: int) -> None:
    while warnings.told < count:
        await asyncio.sleep(0.001)


def test_subscribe_interrupted_while_it_joins_exits_0(tmp_path: Path) -> None:
    log = tmp_path / "sub.log"
    with log.open("wb") as err:
        # Unbuffered: each readline takes one line off the pipe.
        proc = subprocess.Popen(
            [sys.executable, "-c", HANGING_JOIN, "subscribe", "1", "--bootstrap", "127.0.0.1:9"],
            stdout=subprocess.PIPE, stderr=err, cwd=ROOT, bufsize=0)
    try:
        assert proc.stdout is not None
        assert _read_line(proc.stdout, START_TIMEOUT) == "joining\n"
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)  # the join never ends by itself
    finally:
        stop(proc, signal.SIGKILL)
    assert code == 0, log.read_text()
    assert "join cancelled" in log.read_text()


def test_publish_of_a_value_too_large_is_a_usage_error() -> None:
    result = qadom("publish", "1", "-", "--bootstrap", closed_port(),
                   stdin=random.randbytes(8193))
    assert result.returncode == 2
    assert "too large" in one_line_error(result)


def test_subscribe_count_must_be_a_positive_integer() -> None:
    result = qadom("subscribe", "1", "--count", "0", "--bootstrap", "127.0.0.1:9")
    assert result.returncode == 2
    assert one_line_error(result) == (
        "argument --count: expected a positive integer, got '0' (see 'qadom subscribe --help')")
    assert parse_count("1") == 1
    assert parse_count("007") == 7
    for text in ["-1", "two", "1.5", "٣", "+1", " 1", ""]:
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
            parse_count(text)
    with pytest.raises(argparse.ArgumentTypeError, match="too many: at most 18 digits"):
        parse_count("9" * 19)


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize("command",
                         ["keygen", "namespace-set", "namespace-get", "publish", "subscribe"])
def test_every_new_command_has_help_with_examples(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: qadom {command}" in out
    assert f"\nexamples:\n  qadom {command}" in out


def test_a_warning_of_dropped_messages_to_a_stderr_that_cannot_be_written_is_lost_quietly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Full(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sys, "stderr", Full())
    warnings = cli._DroppedWarnings()
    warnings._messages = cast(Subscription, argparse.Namespace(dropped=3))
    warnings.warn()  # before: OSError, which turned a clean stop into a failure
    assert warnings.told == 3
