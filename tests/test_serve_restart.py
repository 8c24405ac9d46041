"""`qadom serve --data-dir` killed with SIGKILL and restarted: same id, every acknowledged value,
rejoined without a bootstrap address. Real processes on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
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
