"""End to end: two ``qadom serve --http-port 0`` processes, the second joined through the first.
A record POSTed through one helper is read through the other, with plain HTTP (the request of a
real /dht client included), and a forged overwrite through the second is refused. Restarted on its
data directory, a node still holds the record and signs with the same key."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from qadom.dhtrecords import SECURED, Entry, compress, make_entry, verify

from helpers import EXAMPLE

SERVING = re.compile(r"qadom serving on (\S+):(\d+)")
HTTP_ON = re.compile(r"qadom http on (\S+):(\d+)")


class Node:
    def __init__(self, process: asyncio.subprocess.Process, udp: int, http: str) -> None:
        self.process = process
        self.udp = udp
        self.http = http


async def read_line(process: asyncio.subprocess.Process, pattern: re.Pattern[str],
                    log: Path) -> re.Match[str]:
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    match = pattern.match(line)
    assert match, f"unexpected output {line!r}; stderr: {log.read_text()[-2000:]}"
    return match


@asynccontextmanager
async def serve(data: Path, *extra: str) -> AsyncIterator[Node]:
    data.mkdir(exist_ok=True)
    log = data / "stderr.log"
    with log.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "qadom", "serve", "--log-level", "warning", "--port", "0",
            "--http-port", "0", "--data-dir", str(data), *extra,
            stdout=asyncio.subprocess.PIPE, stderr=stderr)
        try:
            udp = int((await read_line(process, SERVING, log)).group(2))
            host, port = (await read_line(process, HTTP_ON, log)).groups()
            yield Node(process, udp, f"http://{host}:{port}")
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def test_post_through_one_get_through_the_other(tmp_path: Path) -> None:
    async with serve(tmp_path / "first") as first, serve(
            tmp_path / "second", "--bootstrap", f"127.0.0.1:{first.udp}") as second, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def joined() -> None:
            # Both directions: the record must reach the second node's store (checked after its
            # restart), so the first must have verified the second, not only the reverse.
            for node in (second, first):
                while True:
                    async with http.get(f"{node.http}/node") as response:
                        if (await response.json())["contacts"] >= 1:
                            break
                    await asyncio.sleep(0.05)

        await asyncio.wait_for(joined(), 30)
        async with http.post(f"{first.http}/dht/test_id", json=EXAMPLE) as response:
            assert response.status == 200, await response.text()
        async with http.get(f"{second.http}/dht/test_id") as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
        async with http.get(f"{second.http}/node") as response:
            node_key = bytes.fromhex((await response.json())["public_key"])
        assert json.loads(answer["data"]) == EXAMPLE
        assert answer["authorization"]["pub_key"] == {"key": node_key.hex(), "exp_time": None}
        signature = bytes.fromhex(answer["authorization"]["sign"])
        assert verify(Entry(answer["data"], node_key, None, signature, compress(node_key)),
                      "test_id", SECURED)

        # Another key cannot take the record over through the node that never saw the POST.
        forged = make_entry((5).to_bytes(32, "big"), "test_id", "mine now", SECURED)
        async with http.post(f"{second.http}/dht/test_id",
                             json=forged.to_json(SECURED)) as response:
            assert response.status == 401, await response.text()
        async with http.get(f"{first.http}/dht/test_id") as response:
            assert json.loads((await response.json())["data"])["data"] == "string_payload"

        # Raw values too.
        async with http.post(f"{second.http}/values", data=b"\x00raw\xff") as response:
            key = (await response.json())["key"]
        async with http.get(f"{first.http}/values/{key}") as response:
            assert await response.read() == b"\x00raw\xff"
    for process in (first.process, second.process):
        assert process.returncode == 0

    # Alone and restarted on its data directory: the record and the signing key are still there.
    async with serve(tmp_path / "second") as again, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.get(f"{again.http}/dht/test_id") as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
        assert json.loads(answer["data"]) == EXAMPLE
        assert answer["authorization"]["pub_key"]["key"] == node_key.hex()
