"""`qadom serve --data-dir` killed with SIGKILL and restarted: same id, every acknowledged value,
rejoined without a bootstrap address; and restarted with a `--bootstrap` address that no longer
answers: rejoined through its saved contacts. Real processes on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

from helpers import udp_network

LIMIT = 30.0


async def start_serve(*args: str) -> tuple[asyncio.subprocess.Process, str, int]:
    """Start ``qadom serve`` and read its address and id from the first line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qadom", "serve", "--port", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), LIMIT)).decode()
    assert line.startswith("qadom serving on "), line
    words = line.split()
    return proc, words[3], int(words[5])


async def wait_for_log(proc: asyncio.subprocess.Process, text: str) -> str:
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), LIMIT)).decode()
        assert line, f"process ended before logging {text!r}"
        if text in line:
            return line


async def qadom(*args: str, stdin: bytes | None = None) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qadom", *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), LIMIT)
    assert proc.returncode == 0, err.decode()
    return out


async def test_sigkill_and_restart_keeps_id_values_and_rejoins(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "node")
    async with udp_network(4) as peers:
        proc, address, node_id = await start_serve(
            "--data-dir", data_dir, "--bootstrap", "{}:{}".format(*peers[0].address))
        try:
            await wait_for_log(proc, "joined through")
            values = [f"acknowledged value {i}".encode() * (i + 1) for i in range(5)]
            # All at once: each `qadom set` is its own process, acknowledged when it exits 0.
            keys = [int(out) for out in await asyncio.gather(*(
                qadom("set", "-", "--bootstrap", address, stdin=value) for value in values))]
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), LIMIT)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

        proc, address, restarted_id = await start_serve("--data-dir", data_dir)
        try:
            assert restarted_id == node_id
            await wait_for_log(proc, "rejoined through saved contacts")
            info = json.loads(await qadom("info", "--node", address, "--json"))
            assert info["contacts"] >= 4 and info["store"]["values"] >= len(values)
            for peer in peers:  # from now on only the restarted node can answer
                await peer.close()
            # All at once (each waits out the closed peers' timeouts while joining). Every copy
            # read comes from the restarted node: the peers are closed, and each one-shot `qadom
            # get` starts with an empty store.
            got = await asyncio.gather(*(qadom("get", str(key), "--bootstrap", address)
                                         for key in keys))
            assert got == values
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), LIMIT)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


def silent_address() -> str:
    """HOST:PORT where nothing answers: a UDP port bound, noted and released."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return "{}:{}".format(*sock.getsockname())


async def finished(proc: asyncio.subprocess.Process, sig: int | None = signal.SIGTERM
                   ) -> tuple[int, str]:
    """The exit status and the rest of the stderr of ``proc``, after ``sig`` if it still runs
    (None: it ends by itself); killed if it lingers past LIMIT."""
    assert proc.stderr is not None
    try:
        if sig is not None and proc.returncode is None:
            proc.send_signal(sig)
        err = (await asyncio.wait_for(proc.stderr.read(), LIMIT)).decode()
        return await asyncio.wait_for(proc.wait(), LIMIT), err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_restart_whose_bootstrap_address_is_down_rejoins_through_saved_contacts(
        tmp_path: Path) -> None:
    data_dir = str(tmp_path / "node")
    seed = silent_address()  # the fixed seed of a service, down when the node restarts
    async with udp_network(4) as peers:
        proc, _, _ = await start_serve(
            "--data-dir", data_dir, "--bootstrap", "{}:{}".format(*peers[0].address))
        try:
            await wait_for_log(proc, "joined through")
        finally:
            code, err = await finished(proc)
        assert code == 0, err

        # Before: exit 1, "qadom: could not join: no node answered at <seed>", though the
        # contacts saved in the data dir answered.
        proc, address, _ = await start_serve("--data-dir", data_dir, "--bootstrap", seed)
        try:
            warning = await wait_for_log(proc, "WARNING")
            assert f"no node answered at {seed}" in warning, warning
            await wait_for_log(proc, "rejoined through saved contacts")
            info = json.loads(await qadom("info", "--node", address, "--json"))
            assert info["contacts"] >= 4
        finally:
            code, err = await finished(proc)
        assert code == 0, err

    # Neither the seed nor any saved contact answers: exit 1, naming both.
    proc, _, _ = await start_serve("--data-dir", data_dir, "--bootstrap", seed)
    code, err = await finished(proc, None)
    assert code == 1, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert re.fullmatch(
        rf"qadom: could not join: no node answered at {re.escape(seed)} nor at (the 1 contact|"
        rf"any of the \d+ contacts) saved in {re.escape(repr(data_dir))}", last), last
