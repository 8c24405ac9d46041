"""Four hosts as Linux network namespaces: `qadom serve` on each, values set and got across hosts,
one host's link taken down and brought back.

The test builds its own network and removes it, even when it fails: four namespaces, each with a
veth pair whose other end is a port of one bridge. The bridge has no address, so the private range
10.213.0.0/24 exists only inside these namespaces; every name carries a random suffix, so parallel
runs (each with its own bridge) never meet. It needs root and `ip` from Debian's iproute2, and is
skipped, saying why, only where a namespace cannot be created.

Each node binds the wildcard address of its namespace (only its own veth and loopback there), so
that `qadom info`, which a node answers over loopback only, can ask it from inside its namespace;
the other nodes know it by its veth address, the source of its datagrams.

What "rejoin" means here: a served node sends nothing of its own during a short outage (its
bucket refresh is hourly; the one-shot clients carry the failed requests), so the cut-off node
keeps its three contacts throughout. After the cable is back, the test shows traffic crossing in
both directions with no restart: a value written on the other side during the outage is read from
the cut-off host, a value written on the cut-off host during the outage is read from the other
side, and a new write from it is stored across the link.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence

import pytest

pytestmark = pytest.mark.netns

SUBNET = "10.213.0"  # a /24 that exists only inside the namespaces this test creates
HOSTS = 4
LIMIT = 30.0  # bound of every wait for a process or a line
TIMEOUT = "8"  # --timeout of the one-shot commands: joining, then the operation


def _ip() -> str | None:
    return shutil.which("ip") or next(
        (path for path in ("/usr/sbin/ip", "/sbin/ip", "/bin/ip") if os.access(path, os.X_OK)),
        None)


@functools.cache
def _cannot_create_namespaces() -> str | None:
    """Why this machine cannot run the test, or None. Probes once: adds and deletes a namespace."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    ip = _ip()
    if ip is None:
        return "`ip` (Debian package iproute2) is not installed"
    name = f"qadom-probe-{secrets.token_hex(4)}"
    try:
        added = subprocess.run([ip, "netns", "add", name], capture_output=True, timeout=LIMIT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` failed: {exc}"
    if added.returncode != 0:
        return f"`ip netns add` failed: {added.stderr.decode(errors='replace').strip()}"
    subprocess.run([ip, "netns", "del", name], capture_output=True, timeout=LIMIT)
    return None


class Hosts:
    """Four namespaces on one bridge; :meth:`build` creates them, :meth:`remove` deletes what
    was created (idempotent, never raises)."""

    def __init__(self, ip: str) -> None:
        suffix = secrets.token_hex(3)
        self.ip = ip
        self.bridge = f"qdb{suffix}"  # interface names are at most 15 characters
        self.namespaces = [f"qadom-{suffix}-{i}" for i in range(1, HOSTS + 1)]
        self.outer = [f"qd{suffix}{i}h" for i in range(1, HOSTS + 1)]  # bridge ports
        self.inner = [f"qd{suffix}{i}n" for i in range(1, HOSTS + 1)]  # inside each namespace
        self.addresses = [f"{SUBNET}.{i}" for i in range(1, HOSTS + 1)]
        self._created: list[list[str]] = []  # undo commands, run in reverse

    def run(self, *args: str) -> None:
        done = subprocess.run([self.ip, *args], capture_output=True, timeout=LIMIT)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.decode(errors='replace')}")

    def build(self) -> None:
        self.run("link", "add", self.bridge, "type", "bridge")
        self._created.append(["link", "del", self.bridge])
        self.run("link", "set", self.bridge, "up")
        for ns, outer, inner, address in zip(self.namespaces, self.outer, self.inner,
                                             self.addresses, strict=True):
            self.run("netns", "add", ns)
            self._created.append(["netns", "del", ns])  # takes the veth pair with it
            self.run("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
            self._created.append(["link", "del", outer])
            self.run("link", "set", outer, "master", self.bridge)
            self.run("link", "set", outer, "up")
            self.run("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
            self.run("-n", ns, "link", "set", inner, "up")
            self.run("-n", ns, "link", "set", "lo", "up")

    def link(self, host: int, state: str) -> None:
        """Pull (``down``) or plug back (``up``) host ``host``'s cable: its bridge port."""
        self.run("link", "set", self.outer[host], state)

    def remove(self) -> None:
        while self._created:
            undo = self._created.pop()
            subprocess.run([self.ip, *undo], capture_output=True, timeout=LIMIT)

    def leftovers(self) -> list[str]:
        """Names of ours still present (for the test's own check of its teardown)."""
        links = subprocess.run([self.ip, "-o", "link"], capture_output=True, timeout=LIMIT)
        netns = subprocess.run([self.ip, "netns", "list"], capture_output=True, timeout=LIMIT)
        text = links.stdout.decode() + netns.stdout.decode()
        return [name for name in [self.bridge, *self.outer, *self.namespaces] if name in text]


class Node:
    """One `qadom serve --memory` running in a namespace."""

    def __init__(self, proc: asyncio.subprocess.Process, address: str, port: int) -> None:
        self.proc = proc
        self.address = address  # the veth address others reach it at
        self.port = port
        self._drain: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        return f"{self.address}:{self.port}"

    async def wait_joined(self) -> None:
        """Wait (bounded) for the log line of a completed join, then keep stderr drained."""
        assert self.proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stderr.readline(), LIMIT)).decode()
            assert line, "qadom serve ended before it joined"
            assert "Traceback" not in line, line
            if "joined through" in line:
                break
        self._drain = asyncio.create_task(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        while await self.proc.stderr.read(65536):
            pass

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), LIMIT)
        if self._drain is not None:
            self._drain.cancel()


async def serve(ip: str, ns: str, address: str, *bootstrap: str) -> Node:
    args = [a for where in bootstrap for a in ("--bootstrap", where)]
    proc = await asyncio.create_subprocess_exec(
        ip, "netns", "exec", ns, sys.executable, "-m", "qadom", "serve", "--host", "0.0.0.0",
        "--port", "0", "--memory", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), LIMIT)).decode()
        assert line.startswith("qadom serving on 0.0.0.0:"), line
        return Node(proc, address, int(line.split()[3].rsplit(":", 1)[1]))
    except BaseException:
        proc.kill()
        await asyncio.wait_for(proc.wait(), LIMIT)
        raise


COMMANDS_AT_ONCE = 4  # one-shot commands run at once: their Python start-ups are what costs


async def qadom(ip: str, ns: str, slots: asyncio.Semaphore, *args: str,
                stdin: bytes = b"") -> tuple[int, bytes, str]:
    """Run one `qadom` command in namespace ``ns``: (exit status, stdout, stderr)."""
    async with slots:
        proc = await asyncio.create_subprocess_exec(
            ip, "netns", "exec", ns, sys.executable, "-m", "qadom", *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), LIMIT)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err.decode(errors="replace")


async def test_four_hosts_set_get_link_down_and_rejoin() -> None:
    reason = _cannot_create_namespaces()
    if reason is not None:
        pytest.skip(f"cannot build hosts as network namespaces here: {reason}")
    ip = _ip()
    assert ip is not None
    hosts = Hosts(ip)
    nodes: list[Node] = []
    try:
        hosts.build()
        ns = hosts.namespaces
        slots = asyncio.Semaphore(COMMANDS_AT_ONCE)

        async def set_(host: int, value: bytes) -> int:
            code, out, err = await qadom(ip, ns[host], slots, "set", "-", "--bootstrap",
                                         nodes[host].where, "--timeout", TIMEOUT, stdin=value)
            assert code == 0, err
            return int(out)

        async def get(host: int, key: int) -> tuple[int, bytes, str]:
            return await qadom(ip, ns[host], slots, "get", str(key), "--bootstrap",
                               nodes[host].where, "--timeout", TIMEOUT)

        async def gets(pairs: Sequence[tuple[int, int]]) -> list[bytes]:
            """Get ``key`` from ``host`` for each pair, all at once; every one must succeed."""
            results = await asyncio.gather(*(get(host, key) for host, key in pairs))
            for (host, key), (code, _, err) in zip(pairs, results, strict=True):
                assert code == 0, f"get {key} from host {host + 1}: {err}"
            return [out for _, out, _ in results]

        async def info(host: int) -> dict[str, object]:
            code, out, err = await qadom(ip, ns[host], slots, "info", "--node",
                                         f"127.0.0.1:{nodes[host].port}", "--json")
            assert code == 0, err
            document: dict[str, object] = json.loads(out)
            return document

        async def contacts(host: int, count: int) -> None:
            """Wait (bounded) until host ``host``'s node has ``count`` contacts: a contact is
            added once it has answered a ping, which may still be under way."""
            deadline = asyncio.get_running_loop().time() + LIMIT
            while (found := (await info(host))["contacts"]) != count:
                assert asyncio.get_running_loop().time() < deadline, (host, found)

        # One host after the other, each joining through all the hosts before it, so every pair
        # of nodes has exchanged requests: each table ends with the three others.
        for i in range(HOSTS):
            nodes.append(await serve(ip, ns[i], hosts.addresses[i],
                                     *(node.where for node in nodes)))
            if i:
                await nodes[i].wait_joined()
        await asyncio.gather(*(contacts(host, HOSTS - 1) for host in range(HOSTS)))

        # One value set from each host; each read from every other host.
        values = [f"set on host {i + 1}".encode() for i in range(HOSTS)]
        keys = list(await asyncio.gather(*(set_(i, values[i]) for i in range(HOSTS))))
        pairs = [(reader, i) for i in range(HOSTS) for reader in range(HOSTS) if reader != i]
        got = await gets([(reader, keys[i]) for reader, i in pairs])
        assert got == [values[i] for _, i in pairs]

        # Host 4's cable out: every value, its own included, still read from the three others.
        cut = HOSTS - 1
        hosts.link(cut, "down")
        others = range(cut)
        got = await gets([(reader, keys[i]) for i in range(HOSTS) for reader in others])
        assert got == [values[i] for i in range(HOSTS) for _ in others]
        # Written on each side during the outage: each side reads its own, not the other's.
        outside, inside = b"written on host 2 during the outage", b"written on host 4, cut off"
        outside_key, inside_key = await asyncio.gather(set_(1, outside), set_(cut, inside))
        assert await gets([(0, outside_key), (cut, inside_key)]) == [outside, inside]
        (code_in, _, err_in), (code_out, _, err_out) = await asyncio.gather(
            get(cut, outside_key), get(0, inside_key))
        # Host 4 hears none of the three that hold the outside value: it cannot say it is not
        # there. The others hear two of the three peers nearest the inside value answer without
        # it, and its only holder stay silent: not found, as far as they can tell.
        assert code_in == 1 and "it may be held there" in err_in, err_in
        assert code_out == 1 and "not found" in err_out, err_out

        # Cable back in: host 4 reaches the others and they reach it, in both directions, with
        # no restart. (Bounded retries: the bridge port may take a moment to forward again.)
        hosts.link(cut, "up")
        deadline = asyncio.get_running_loop().time() + LIMIT
        while True:
            results = await asyncio.gather(get(cut, outside_key), get(0, inside_key))
            if all(code == 0 for code, _, _ in results):
                break
            assert asyncio.get_running_loop().time() < deadline, [err for _, _, err in results]
        assert [out for _, out, _ in results] == [outside, inside]
        await contacts(cut, HOSTS - 1)
        # ... and what it writes now is stored across the link and read on another host.
        back = b"written on host 4 after the link came back"
        assert await gets([(0, await set_(cut, back))]) == [back]
        for node in nodes:
            assert node.proc.returncode is None, "a node died"
    finally:
        await asyncio.gather(*(node.kill() for node in nodes), return_exceptions=True)
        hosts.remove()
    assert hosts.leftovers() == []
