"""qadom.interactive and the peer scripts: blocking and awaited forms, the scripts under plain
python, and `ipython -i peers/peer0.py` serving other peers while its prompt sits idle.

Every process is started on port 0 (the scripts print the address they bound), every wait is
bounded by a pexpect timeout, and every process is killed in a finally block.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pexpect
import pytest

from qadom import Config, InvalidArgument, InvalidType, NoPeersError, Peer, interactive, key_for
from qadom.errors import LoopRunningError
from qadom.interactive import (
    ScriptOptions,
    blocking,
    close,
    event_loop,
    front_end,
    parse_address,
    script_options,
    shutdown,
    start,
    start_peer,
    start_script_peer,
    started,
    wait,
    will_prompt,
)
from qadom.messages import Error, ErrorCode, FindNode

from helpers import FAST, PEERS, ROOT, SUDO_PYTHON_KEY, on, wait_until

ADDRESS = re.compile(r"listening on (127\.0\.0\.1):(\d+)")
SERVING = "serving until Ctrl-C"  # printed once Ctrl-C is handled: the scripts are serving
WAIT = 30  # seconds: the bound on any one expected output


# ---------------------------------------------------------------------- in process

def test_the_key_of_sudo_python() -> None:
    assert key_for(b"sudo python") == SUDO_PYTHON_KEY


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9999") == ("127.0.0.1", 9999)
    assert parse_address("[::1]:9996") == ("::1", 9996)
    assert parse_address(("localhost", 1)) == ("localhost", 1)
    for bad in ("127.0.0.1", ":9999", "host:port", "h:70000", ("h", -1), ("h", True),
                "127.0.0.1:0", ("localhost", 0),  # port 0 names no peer to reach
                "127.0.0.1:\u0662\u0661\u0660\u0660\u0660",  # digits, but not ASCII ones
                "[::1:9999", "a..b:9999"):  # unbalanced bracket; a name no resolver takes
        with pytest.raises(InvalidArgument):
            parse_address(bad)
    for wrong in (9999, ("h", 1, 2), ("", 1), (b"h", 1)):
        with pytest.raises(InvalidType):
            parse_address(wrong)  # type: ignore[arg-type]


def test_script_options_arguments_then_environment_then_defaults() -> None:
    default = script_options("t", port=9997, bootstrap=["127.0.0.1:9999"], argv=[], environ={})
    assert (default.host, default.port, default.bootstrap) == (
        "127.0.0.1", 9997, (("127.0.0.1", 9999),))
    env = {"QADOM_PORT": "0", "QADOM_BOOTSTRAP": "[::1]:5000, [::1]:5001",
           "QADOM_HOST": "::1"}
    from_env = script_options("t", port=9997, bootstrap=["127.0.0.1:9999"], argv=[], environ=env)
    assert (from_env.host, from_env.port, from_env.bootstrap) == (
        "::1", 0, (("::1", 5000), ("::1", 5001)))
    argv = ["--host", "127.0.0.1", "--port", "1234", "--bootstrap", "10.0.0.1:1",
            "--bootstrap", "10.0.0.2:2"]
    from_args = script_options("t", port=9997, argv=argv, environ=env)
    assert (from_args.port, from_args.bootstrap) == (1234, (("10.0.0.1", 1), ("10.0.0.2", 2)))
    assert script_options("t", port=9999, argv=[], environ={"QADOM_BOOTSTRAP": ""}).bootstrap == ()



@pytest.mark.parametrize(("argv", "environ", "named"), [
    ([], {"QADOM_PORT": "ninety"}, "QADOM_PORT"),
    (["--port", "70000"], {}, "--port"),
    ([], {"QADOM_PORT": "70000"}, "QADOM_PORT"),
    (["--bootstrap", "127.0.0.1:0"], {}, "--bootstrap"),  # a bootstrap peer cannot be at port 0
    (["--host", "a..b"], {}, "--host"),  # an empty label: no socket can bind it
    ([], {"QADOM_HOST": "fe80::1%no such zone"}, "QADOM_HOST"),
    ([], {"QADOM_BOOTSTRAP": "nowhere"}, "QADOM_BOOTSTRAP"),
    (["--host", "::1", "--bootstrap", "127.0.0.1:9999"], {}, "--bootstrap: 127.0.0.1:9999 is an"
     " IPv4 address and --host ::1 is IPv6"),
    (["--bootstrap", "[::1]:9999"], {"QADOM_HOST": "127.0.0.1"}, "--bootstrap: [::1]:9999"),
    ([], {"QADOM_HOST": "::1", "QADOM_BOOTSTRAP": "127.0.0.1:9"}, "QADOM_BOOTSTRAP: 127.0.0.1:9"),
])
def test_a_bad_script_option_is_a_usage_error_naming_it(
        argv: list[str], environ: dict[str, str], named: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """As `--port x` is (argparse's own check): status 2 and one line naming the option, not a
    traceback."""
    with pytest.raises(SystemExit) as info:
        script_options("t", port=9999, argv=argv, environ=environ)
    assert info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert f"error: {named}" in error


@pytest.fixture
def script_loop() -> Iterator[None]:
    """Blocking helpers on this module's own loop; everything closed afterwards."""
    assert front_end() == "script" and not will_prompt()
    try:
        yield
    finally:
        shutdown()
    assert started() == []


def test_blocking_form_from_plain_code(script_loop: None) -> None:
    first = start_peer(port=0, config=FAST)
    second = start_peer(port=0, bootstrap=[f"127.0.0.1:{first.address[1]}"], config=FAST)
    assert started() == [first, second]
    sync = blocking(second)
    assert sync.set(b"sudo python") == SUDO_PYTHON_KEY
    assert blocking(first).get(SUDO_PYTHON_KEY) == b"sudo python"
    assert sync.address == second.address and sync.id == second.id  # attributes pass through
    assert "get" in dir(sync) and "blocking(" in repr(sync)
    assert wait(first.find_nodes(second.id), timeout=WAIT)[0].id == second.id
    with pytest.raises(InvalidType):
        wait(42)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        sync.get(key_for(b"never stored"))


@contextmanager
def interrupted_at_first_datagram() -> Iterator[tuple[str, int]]:
    """The address of a peer that never answers; the first datagram sent to it raises
    KeyboardInterrupt in the module's loop, as Ctrl-C would while a blocking call waits."""
    loop = event_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))

        def interrupt() -> None:
            loop.remove_reader(silent.fileno())
            raise KeyboardInterrupt

        loop.add_reader(silent.fileno(), interrupt)
        try:
            yield silent.getsockname()
        finally:
            with suppress(ValueError, OSError):  # already removed when it fired
                loop.remove_reader(silent.fileno())


def test_ctrl_c_during_a_blocking_call_cancels_it(script_loop: None) -> None:
    """Ctrl-C while a blocking call waits (here: joining through a peer that never answers)
    cancels the operation: the half-joined peer is closed, nothing is left pending on the loop to
    run later, and KeyboardInterrupt reaches the caller. The loop serves the next call."""
    with interrupted_at_first_datagram() as silent, pytest.raises(KeyboardInterrupt):
        start_peer(port=0, bootstrap=[silent], config=FAST)
    assert started() == []
    assert asyncio.all_tasks(event_loop()) == set()
    peer = start_peer(port=0, config=FAST)
    assert started() == [peer]
    blocking(peer).append(1, 2)
    assert blocking(peer).search(1) == {2}


def test_a_script_peer_that_cannot_reach_its_bootstrap_says_so(
        script_loop: None) -> None:
    """A --bootstrap address of the other IP family than --host: one line naming it
    (SystemExit), not a traceback; the peer is closed again."""
    options = ScriptOptions("127.0.0.1", 0, (("::1", 9999),))
    with pytest.raises(SystemExit) as info:
        start_script_peer("peer9", options, config=FAST)
    assert str(info.value.code).startswith("peer9: cannot join through [::1]:9999: ")
    assert started() == []


def test_a_script_peer_whose_join_fails_otherwise_says_so(script_loop: None) -> None:
    """A bootstrap peer that answers the ping but never the lookup of our own id: the join
    fails with OperationTimeout, which ends the script with one line (SystemExit), not a
    traceback; the peer is closed again."""
    quick = Config(rpc_timeout=0.05, rpc_timeout_min=0.05, rpc_timeout_max=0.1)
    mute = start_peer(port=0, config=quick)
    mute.node.register_handler(FindNode, lambda message, sender, address, now: Error(
        ErrorCode.INTERNAL, "internal error"))  # a lookup takes an ERROR as no answer
    options = ScriptOptions("127.0.0.1", 0, (mute.address,))
    with pytest.raises(SystemExit) as info:
        start_script_peer("peer9", options, config=quick)
    assert str(info.value.code) == (
        f"peer9: could not join through 127.0.0.1:{mute.address[1]}: the bootstrap peers "
        "answered, but nobody answered the lookup of our own id (3 tries)")
    assert started() == [mute]
    wait(close(mute))


def test_a_script_peer_whose_host_does_not_resolve_says_so_in_one_line(
        script_loop: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolver's answer for a name (stubbed: no query leaves the machine) ends the script
    with one line naming the host, not a traceback."""
    real = socket.getaddrinfo

    def resolve(host: object, *args: object, **kwargs: object) -> object:
        if host == "nowhere.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(SystemExit) as info:
        start_script_peer("peer9", ScriptOptions("nowhere.invalid", 0, ()))
    assert str(info.value.code) == ("peer9: cannot listen on nowhere.invalid:0: cannot resolve "
                                    "'nowhere.invalid': Name or service not known")
    assert started() == []


def test_a_script_peer_told_to_join_through_its_own_name_says_so(script_loop: None) -> None:
    """Its own address spelled as a name (localhost for 127.0.0.1) is its own address too."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))  # a port the OS gave, free again for the peer
    port = probe.getsockname()[1]
    probe.close()
    options = ScriptOptions("127.0.0.1", port, (("localhost", port),))
    with pytest.raises(SystemExit) as info:
        start_script_peer("peer9", options, config=FAST)
    assert str(info.value.code).startswith(
        f"peer9: cannot join through localhost:{port}: this peer listens there itself")
    assert started() == []


@pytest.mark.parametrize("where", ["script", "ipython"])
def test_ctrl_c_while_a_script_peer_joins_closes_it(
        script_loop: None, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """As start_peer with bootstrap: Ctrl-C during the join leaves no half-joined peer serving
    (at an `ipython -i` prompt it would go on answering others). A plain script then ends
    quietly with status 130, as script_errors ends it after the join; at the prompt the
    KeyboardInterrupt stays, for the prompt to show."""
    # The front end is only what front_end says: with IPython not imported, starting the peer
    # looks for no real prompt to serve at (Peer.start).
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(interactive, "front_end", lambda: where)
    with (interrupted_at_first_datagram() as silent,
          pytest.raises((SystemExit, KeyboardInterrupt)) as info):
        start_script_peer("peer9", ScriptOptions("127.0.0.1", 0, (silent,)), config=FAST)
    if where == "script":  # before: a KeyboardInterrupt, which Python shows with a traceback
        assert isinstance(info.value, SystemExit) and info.value.code == 130
    else:
        assert type(info.value) is KeyboardInterrupt
    assert started() == []
    assert asyncio.all_tasks(event_loop()) == set()


async def test_blocking_calls_refuse_a_running_loop() -> None:
    # As in a Jupyter cell: the loop runs in this thread, so blocking would freeze it.
    before = started()
    with pytest.raises(LoopRunningError):
        start_peer(port=0)
    assert started() == before
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        with pytest.raises(LoopRunningError):
            blocking(peer).get(SUDO_PYTHON_KEY)


async def test_awaited_form_on_the_running_loop() -> None:
    # The Jupyter path: peers start on the running loop and answer between awaits.
    first = await start(port=0, config=FAST)
    try:
        second = await start(port=0, bootstrap=[first.address], config=FAST)
        key = await second.set(b"sudo python")
        assert await first.get(key) == b"sudo python"
        assert {first, second} <= set(started())
        with pytest.raises(InvalidArgument):
            await start(port=0, bootstrap=["nowhere"])
        # A bootstrap nobody answers: the new peer is closed again, not left half-joined.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            with pytest.raises(NoPeersError):
                await start(port=0, bootstrap=[silent.getsockname()], config=FAST)
        assert started() == [first, second]
        # One address needs no list: a "host:port" string or a (host, port) pair.
        host, port = first.address
        third = await start(port=0, bootstrap=f"{host}:{port}", config=FAST)
        fourth = await start(port=0, bootstrap=(host, port), config=FAST)
        assert len(third.routing_table) >= 1 and len(fourth.routing_table) >= 1
        await third.close()  # closed by itself, not through close(): no longer listed
        assert started() == [first, second, fourth]
    finally:
        await close()
    assert started() == []


# ---------------------------------------------------------------------- processes

def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QADOM_")}
    env.update(extra)
    return env


def _spawn(args: list[str], env: dict[str, str]) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, args, env=env, cwd=str(ROOT), encoding="utf-8",
                         timeout=WAIT, dimensions=(50, 200))


def _run_peer1_and_peer2(env: dict[str, str], children: list[pexpect.spawn],
                         ) -> tuple[pexpect.spawn, pexpect.spawn]:
    """peer1 sets b'sudo python' and prints its key; peer2 gets it back; both keep serving."""
    peer1 = _spawn([str(PEERS / "peer1.py")], env)
    children.append(peer1)
    peer1.expect(ADDRESS)
    peer1.expect(r"(\d+)\r?\n")
    assert int(peer1.match.group(1)) == SUDO_PYTHON_KEY
    peer1.expect(SERVING)
    peer2 = _spawn([str(PEERS / "peer2.py")], env)
    children.append(peer2)
    peer2.expect(ADDRESS)
    peer2.expect(r"(b'sudo python')\r?\n")
    peer2.expect(SERVING)
    return peer1, peer2


def _stop(child: pexpect.spawn) -> int | None:
    """Ctrl-C, then the exit status (None if it had to be killed)."""
    if not child.isalive():
        child.close()
        status: int | None = child.exitstatus
        return status
    child.sendintr()
    try:
        child.expect(pexpect.EOF, timeout=WAIT)
    except pexpect.TIMEOUT:
        child.terminate(force=True)
        return None
    child.close()
    status = child.exitstatus
    return status


def _start_peer0(children: list[pexpect.spawn]) -> str:
    """peer0 under plain python on a free port, serving; its HOST:PORT."""
    peer0 = _spawn([str(PEERS / "peer0.py"), "--port", "0"], _env())
    children.append(peer0)
    peer0.expect(ADDRESS)
    address = f"{peer0.match.group(1)}:{peer0.match.group(2)}"
    peer0.expect(SERVING)
    return address


def test_peer_scripts_under_plain_python() -> None:
    children: list[pexpect.spawn] = []
    try:
        address = _start_peer0(children)
        env = _env(QADOM_PORT="0", QADOM_BOOTSTRAP=address)
        _run_peer1_and_peer2(env, children)
        # They keep serving until Ctrl-C, then close their peers and exit cleanly.
        assert all(child.isalive() for child in children)
        assert [_stop(child) for child in reversed(children)] == [0, 0, 0]
    finally:
        for child in children:
            child.terminate(force=True)


def test_ipython_prompt_serves_while_idle(tmp_path: Path) -> None:
    """`ipython -i peers/peer0.py` sits at its prompt, nothing typed, while peer1 (which must
    reach it to join) and peer2 run in other processes; then `await` works at the prompt."""
    children: list[pexpect.spawn] = []
    try:
        ipython_env = _env(QADOM_PORT="0", IPYTHONDIR=str(tmp_path / "ipython"),
                           PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
        peer0 = _spawn(["-m", "IPython", "-i", "--no-banner", "--colors=nocolor",
                        str(PEERS / "peer0.py")], ipython_env)
        children.append(peer0)
        peer0.expect(ADDRESS)
        address = f"{peer0.match.group(1)}:{peer0.match.group(2)}"
        peer0.expect(r"In \[1\]")  # idle at the prompt from here on

        env = _env(QADOM_PORT="0", QADOM_BOOTSTRAP=address)
        peer1, peer2 = _run_peer1_and_peer2(env, children)

        peer0.sendline("await peer.get(KEY)")
        peer0.expect(r"Out\[1\]: (?:\x1b\[[0-9;]*m)*(b'sudo python')")
        peer0.sendline("sync.get(KEY)")  # the blocking form, at the same prompt
        peer0.expect(r"Out\[2\]: (?:\x1b\[[0-9;]*m)*(b'sudo python')")
        peer0.sendline("len(await peer.find_nodes(peer.id))")
        peer0.expect(r"Out\[3\]: (?:\x1b\[[0-9;]*m)*2")
        peer0.sendline("exit")
        peer0.expect(pexpect.EOF)
        assert [_stop(child) for child in (peer2, peer1)] == [0, 0]
    finally:
        for child in children:
            child.terminate(force=True)


def test_a_plain_peer_started_at_the_ipython_prompt_serves_while_idle(tmp_path: Path) -> None:
    """`Peer(...)` and `await peer.start()` typed at a terminal IPython prompt, without
    qadom.interactive: the peer answers another process while the prompt waits."""
    ipython_env = _env(IPYTHONDIR=str(tmp_path / "ipython"), PROMPT_TOOLKIT_NO_CPR="1",
                       TERM="xterm")
    shell = _spawn(["-m", "IPython", "--no-banner", "--colors=nocolor"], ipython_env)
    try:
        shell.expect(r"In \[1\]")
        shell.sendline("from qadom import Peer; peer = Peer('127.0.0.1', 0); "
                       "await peer.start(); print('bound', peer.address[1])")
        shell.expect(r"bound (\d+)")
        port = int(shell.match.group(1))
        shell.expect(r"In \[2\]")  # idle at the prompt from here on

        async def ping() -> int:
            async with Peer("127.0.0.1", 0, config=FAST) as client:
                contact = await asyncio.wait_for(client.ping(("127.0.0.1", port)), WAIT)
                return contact.address[1]

        assert asyncio.run(ping()) == port
        shell.sendline("exit")
        shell.expect(pexpect.EOF)
    finally:
        shell.terminate(force=True)


def test_ctrl_c_stops_an_await_at_the_ipython_prompt(tmp_path: Path) -> None:
    """Ctrl-C during `await peer.bootstrap(...)` at the prompt stops that operation where the
    cell awaited it (one KeyboardInterrupt, shown at the cell's line), instead of leaving it
    running on the loop the prompt keeps running and printing its outcome over a later prompt."""
    ipython_env = _env(QADOM_PORT="0", IPYTHONDIR=str(tmp_path / "ipython"),
                       PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
    peer0 = _spawn(["-m", "IPython", "-i", "--no-banner", "--colors=nocolor",
                    str(PEERS / "peer0.py")], ipython_env)
    try:
        peer0.expect(r"In \[1\]")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            silent.settimeout(WAIT)
            peer0.sendline(f"await peer.bootstrap([{silent.getsockname()!r}])")
            silent.recvfrom(2048)  # the join has started: the cell is awaiting
            peer0.sendintr()
            peer0.expect(r"In \[2\]")
        shown = peer0.before
        assert shown.count("KeyboardInterrupt") == 2  # its name in the header and last line
        assert "Cell In[1]" in shown and "CancelledError" not in shown
        assert "base_events.py" not in shown  # not a traceback of asyncio's internals
        peer0.sendline("import asyncio, qadom.interactive; "
                       "len(asyncio.all_tasks(qadom.interactive.event_loop()))")
        peer0.expect(r"Out\[2\]: (?:\x1b\[[0-9;]*m)*(\d+)")
        assert peer0.match.group(1) == "0"  # nothing left running from the interrupted cell
        # The prompt and the peer work as before.
        peer0.sendline("await peer.append(1, 7); await peer.search(1)")
        peer0.expect(r"Out\[3\]: (?:\x1b\[[0-9;]*m)*\{7\}")
        peer0.sendline("exit")
        peer0.expect(pexpect.EOF)
    finally:
        peer0.terminate(force=True)


@pytest.mark.parametrize("started", [
    "from qadom.interactive import start_peer; peer = start_peer(port=0, bootstrap={relay!r})",
    "from qadom import Peer; peer = Peer(port=0); await peer.start(); "
    "await peer.bootstrap([{relay!r}])",
], ids=["start_peer", "Peer.start"])
async def test_exiting_ipython_closes_the_peers_started_at_its_prompt(
        tmp_path: Path, started: str) -> None:
    """`exit` at a terminal IPython prompt closes the peer started there, however it was
    started: its relay (a peer in this process) drops its subscription at once (UNSUBSCRIBE),
    not when the 60 s lease lapses."""
    topic = 99
    async with Peer("127.0.0.1", 0, config=FAST) as relay:

        def subscribers() -> int:
            return len(relay.node.pubsub.relay.subscribers(topic, time.time()))

        ipython_env = _env(IPYTHONDIR=str(tmp_path / "ipython"), PROMPT_TOOLKIT_NO_CPR="1",
                           TERM="xterm")
        shell = _spawn(["-m", "IPython", "--no-banner", "--colors=nocolor"], ipython_env)
        try:
            # pexpect blocks: it waits in a thread, so that this loop runs the relay meanwhile
            await asyncio.to_thread(shell.expect, r"In \[1\]")
            shell.sendline(started.format(relay=relay.address))
            await asyncio.to_thread(shell.expect, r"In \[2\]")
            shell.sendline(f"messages = await peer.subscribe({topic}).__aenter__(); "
                           "print('relays', messages.relays)")
            await asyncio.to_thread(shell.expect, r"relays (\d+)")
            assert shell.match.group(1) == "1" and subscribers() == 1
            await asyncio.to_thread(shell.expect, r"In \[3\]")
            shell.sendline("exit")
            await asyncio.to_thread(shell.expect, pexpect.EOF)
        finally:
            shell.terminate(force=True)
        await wait_until(lambda: subscribers() == 0, timeout=5)  # the lease is 60 s


def test_a_peer_script_says_plainly_why_it_cannot_start() -> None:
    """The port a script wants is taken (`qadom serve` on 9999, or a peer0 already running): one
    line on stderr naming the address and what to do, exit status 1, no traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, str(PEERS / "peer0.py"), "--port", str(port)],
                              env=_env(), cwd=str(ROOT), capture_output=True, text=True,
                              timeout=WAIT)
    assert done.returncode == 1 and done.stdout == ""
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"peer0: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in done.stderr and "--port" in done.stderr


def test_a_peer_script_told_to_join_through_itself_says_so_in_one_line() -> None:
    """peer0 given its own address as --bootstrap: its own answer is no peer, so one line at
    once (not the lookups' timeouts, then a traceback), exit status 1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([sys.executable, str(PEERS / "peer0.py"), "--port", str(port),
                           "--bootstrap", f"127.0.0.1:{port}"],
                          env=_env(), cwd=str(ROOT), capture_output=True, text=True,
                          timeout=WAIT)
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"peer0: cannot join through 127.0.0.1:{port}: this peer "
                                  "listens there itself; "), done.stderr


def test_a_script_whose_operation_fails_says_so_in_one_line() -> None:
    """peer2 run before peer1 has stored b'sudo python': one line saying what to run first,
    exit status 1, no traceback. (peer2 cannot run with nobody to ask: an empty QADOM_BOOTSTRAP
    is a usage error for it, tests/test_scripts_stop.py.)"""
    children: list[pexpect.spawn] = []
    try:
        address = _start_peer0(children)
        for env, reason in [
            (_env(QADOM_PORT="0", QADOM_BOOTSTRAP=address),
             f"peer2: no peer reached holds key 0x{SUDO_PYTHON_KEY:064x}; peers/peer1.py "
             "stores it: run it first"),
        ]:
            done = subprocess.run([sys.executable, str(PEERS / "peer2.py")], env=env,
                                  cwd=str(ROOT), capture_output=True, text=True, timeout=WAIT)
            assert done.returncode == 1, done.stderr
            assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
            assert done.stderr.startswith(reason), done.stderr
    finally:
        for child in children:
            child.terminate(force=True)


def test_a_ctrl_c_while_closing_at_exit_ends_the_close_quietly(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while the exit hook closes the peers: one line on stderr, and the close it
    interrupted is ended, not left pending on the loop (which would warn as Python exits)."""
    import qadom.interactive as interactive

    loop = asyncio.new_event_loop()
    try:
        async def slow_close(peer: object = None) -> None:
            await asyncio.sleep(3600)

        def interrupt() -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(interactive, "_loop_of", lambda peer: loop)
        monkeypatch.setattr(interactive, "started", lambda: [object()])
        monkeypatch.setattr(interactive, "close", slow_close)
        loop.call_later(0.01, interrupt)
        interactive._close_at_exit()
        assert asyncio.all_tasks(loop) == set()
        assert capsys.readouterr().err.startswith("qadom: could not close the peers at exit: ")
    finally:
        loop.close()


def test_peers_still_open_at_exit_are_closed_each_on_its_own_loop(
        monkeypatch: pytest.MonkeyPatch, other_loop: asyncio.AbstractEventLoop) -> None:
    """As at the IPython prompt after a cell ran ``asyncio.run()`` with a peer in it: that first
    peer's loop has ended by the time the interpreter exits, and the peers started later, on
    other loops, are closed all the same, each on its own loop. A peer whose loop is running
    (in another thread) at exit is left alone: nothing runs on it from here."""
    registered: list[object] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(interactive, "_started", [])
    monkeypatch.setattr(interactive, "_exit_hook_registered", False)  # not registered yet

    async def start_here() -> Peer:  # as Peer.start does at the prompt (serve_at_prompt)
        peer = Peer("127.0.0.1", 0, config=FAST)
        await peer.start()
        interactive._close_peers_at_exit(peer)
        return peer

    async def first_cell() -> None:
        async with await start_here():
            pass

    asyncio.run(first_cell())
    loops = [asyncio.new_event_loop(), asyncio.new_event_loop()]
    peers: list[Peer] = []
    try:
        peers = [loop.run_until_complete(start_here()) for loop in loops]
        busy = on(other_loop, start_here())  # its loop runs in another thread
        assert registered == [interactive._close_at_exit]  # registered once
        assert started() == [*peers, busy]
        interactive._close_at_exit()
        assert [peer.closed for peer in peers] == [True, True]
        assert not busy.closed and started() == [busy]
        assert all(asyncio.all_tasks(loop) == set() for loop in loops)
        on(other_loop, busy.close())
    finally:
        for peer, loop in zip(peers, loops, strict=False):
            if not peer.closed:
                loop.run_until_complete(peer.close())
        for loop in loops:
            loop.close()


@pytest.mark.parametrize(("argv", "environ", "named"), [
    (["--host", "::1"], {}, "the default bootstrap 127.0.0.1:9999 is an IPv4 address and "
     "--host ::1 is IPv6"),
    ([], {"QADOM_HOST": "::1"}, "the default bootstrap 127.0.0.1:9999 is an IPv4 address and "
     "QADOM_HOST ::1 is IPv6"),
    (["--bootstrap", "[::1]:9999"], {}, "--bootstrap: [::1]:9999 is an IPv6 address and the "
     "default host 127.0.0.1 is IPv4"),
])
def test_a_default_that_does_not_fit_is_named_as_the_default(
        argv: list[str], environ: dict[str, str], named: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """peers/peer2.py --host ::1: the bootstrap that does not fit is the script's default, not
    QADOM_BOOTSTRAP, which is not set; the user would look for it in vain."""
    with pytest.raises(SystemExit) as info:
        script_options("t", port=9996, bootstrap=["127.0.0.1:9999"], argv=argv, environ=environ)
    assert info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert f"error: {named}: a peer cannot reach it" in error
    assert all(name not in error for name in ("QADOM_HOST", "QADOM_PORT", "QADOM_BOOTSTRAP")
               if name not in environ)
