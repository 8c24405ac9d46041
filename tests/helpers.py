"""Shared test helpers: networks of real peers on 127.0.0.1 (port 0), bounded waits.

Import them with `from helpers import ...` (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import cbor2
from nacl.signing import SigningKey

from qadom import Config, NotFoundError, Peer
from qadom.codec import Codec
from qadom.contact import Address, Contact
from qadom.messages import Envelope, Message
from qadom.namespace import NamespaceRecord
from qadom.node import Node
from qadom.sim import SimNetwork

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "peers"  # the example peer scripts
SUDO_PYTHON_KEY = 44523492095186523269265158000087001266127815262863473237438729878159874507476
"""The key peers/peer1.py stores b"sudo python" under, and peers/peer2.py reads."""

# Loopback is fast; these keep a dead peer's cost small without mistaking a busy loop for a
# dead peer (the machine running the suite may be loaded).
FAST = Config(rpc_timeout=0.5, rpc_timeout_min=0.25, rpc_timeout_max=1.0, operation_timeout=20.0)


def clustered_network(count: int) -> tuple[SimNetwork, list[Node]]:
    """``count`` simulated nodes (k = 4) whose ids share their first 248 bits, each joined
    through the first: each table splits along its id's path, a bucket per level, over 200."""
    net = SimNetwork(7, config=Config(k=4))
    base = random.Random(1).getrandbits(256) & ~0xFF
    ids = random.Random(2).sample(range(1, 256), count)
    nodes = [net.add_node(node_id=base | i) for i in ids]
    for node in nodes[1:]:
        net.run_call(net.call(node, node.bootstrap, [net.address_of(nodes[0])]), timeout=600)
    return net, nodes


@asynccontextmanager
async def udp_network(count: int, *, config: Config = FAST, seed: int = 0,
                      ) -> AsyncIterator[list[Peer]]:
    """``count`` started peers on 127.0.0.1, each joined through the first; all closed after."""
    rng = random.Random(seed)
    peers = [Peer("127.0.0.1", 0, config=config, rng=random.Random(rng.getrandbits(64)))
             for _ in range(count)]
    try:
        for peer in peers:
            await peer.start()
        for peer in peers[1:]:
            await asyncio.wait_for(peer.bootstrap([peers[0].address]), 30)
        yield peers
    finally:
        for peer in peers:
            await peer.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
                     poll: Callable[[], Awaitable[None]] | None = None) -> None:
    """Wait (bounded) until ``predicate()`` holds, checking after each loop turn."""
    async def loop() -> None:
        while not predicate():
            await (poll() if poll else asyncio.sleep(0.01))
    await asyncio.wait_for(loop(), timeout)


def answer_requests(node: Node, codec: Codec,
                    reply: Callable[[Address, Message], tuple[int, Message] | None],
                    now: float, rounds: int = 20) -> list[Address]:
    """Play the peers a sans-IO ``node`` asks: answer every request it sends with what
    ``reply(address, request)`` gives, ``(sender id, message)`` (None: no answer), until it sends
    none (at most ``rounds`` times). Returns the addresses asked, in order."""
    asked: list[Address] = []
    for _ in range(rounds):
        out = node.datagrams_to_send()
        if not out:
            break
        for data, address in out:
            request = codec.decode(data)
            if not request.message.IS_REQUEST:
                continue
            asked.append(address)
            answer = reply(address, request.message)
            if answer is not None:
                sender, message = answer
                node.datagram_received(codec.encode(Envelope(request.rpc_id, sender, message)),
                                       address, now)
    return asked


# The request of a real client of the /dht API, posted to /dht/test_id: it must verify.
EXAMPLE: dict[str, Any] = {
    "data": "string_payload", "persist_mode": "SECURED",
    "authorization": {
        "pub_key": {"key": "0224d2079e86e937224f08aa37a857ca6116546868edde549d0bd6b8536af9d554",
                    "exp_time": None},
        "sign": "d3f1d0cfeb6e9913ffe1759e9a5a331a65dade83f53ca6ef60f2c588238c4cc2497d6f48b1968e"
                "31e98fc749d1887d6bb546718f2676a3308f9701a6b399c2c1"}}


def far_topic(nodes: list[Node], participants: list[Node], k: int, seed: int | None = None) -> int:
    """A topic whose 2k closest nodes include none of ``participants`` (so none of them relays
    it, for itself or for the others); drawn from a generator seeded with ``seed`` (k without)."""
    rng = random.Random(k if seed is None else seed)
    for _ in range(1000):
        topic = rng.getrandbits(256)
        closest = sorted(nodes, key=lambda n: n.id ^ topic)[:2 * k]
        if not any(p in closest for p in participants):
            return topic
    raise AssertionError("no such topic in this network")


T = TypeVar("T")


def on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on ``loop`` (running in another thread) and return its result."""
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(10)


def deliver(nodes: dict[Address, Node], now: float) -> None:
    """Carry every datagram the sans-IO ``nodes`` (keyed by their addresses) send to its
    destination at ``now`` until none is left; AssertionError if they never fall quiet."""
    for _ in range(10_000):
        moved = False
        for node in nodes.values():
            assert node.address is not None
            for data, address in node.datagrams_to_send():
                moved = True
                nodes[address].datagram_received(data, node.address, now)
        if not moved:
            return
    raise AssertionError("the nodes never fell quiet")


KERNEL = "qadom-test-python"
"""The name of the Jupyter kernel :func:`kernel_environment` describes."""


def kernel_environment(home: Path) -> dict[str, str]:
    """The environment of a Jupyter kernel of this interpreter, named :data:`KERNEL`, with its
    kernelspec and every Jupyter, IPython and matplotlib directory under ``home`` (nothing is
    installed outside it)."""
    spec = home / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "qadom tests", "language": "python"}))
    return {"JUPYTER_PATH": str(home), "JUPYTER_PLATFORM_DIRS": "1",
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(home / "ipython"),
            "MPLCONFIGDIR": str(home / "matplotlib")}


def ask_proven(node: Node, message: Message, source: Address, now: float) -> Message:
    """Hand the sans-IO ``node`` ``message`` from ``source`` with the token ``node`` grants
    that address (a request whose source is proven), and return its one reply to it."""
    codec = Codec(node.config)
    token = node.token_for(source)
    node.datagram_received(codec.encode(Envelope(7, None, message, token)), source, now)
    replies = [codec.decode(data).message for data, address in node.datagrams_to_send()
               if address == source]
    assert len(replies) == 1
    return replies[0]


def node_near(target: int, count: int = 3) -> tuple[Node, Codec, list[Contact]]:
    """A sans-IO node (k and alpha ``count``, id 0) whose table holds ``count`` contacts close
    to ``target``, closest first, at 10.0.0.1, 10.0.0.2..., and a codec of its config."""
    config = Config(k=count, alpha=count)
    node = Node(node_id=0, now=0.0, config=config)
    contacts = [Contact(target ^ (1 << (100 + i)), (f"10.0.0.{i + 1}", 4000))
                for i in range(count)]
    for contact in contacts:
        node.table.seen(contact)
    return node, Codec(config), contacts


def signed_record(owner: SigningKey, key: int, seq: int, value: bytes) -> NamespaceRecord:
    """Version ``seq`` of ``key`` in ``owner``'s namespace, signed with plain PyNaCl over the
    documented bytes."""
    public = bytes(owner.verify_key)
    data = cbor2.dumps(["qadom/namespace/v1", public, key.to_bytes(32, "big"), seq, value])
    return NamespaceRecord(public, key, seq, value, owner.sign(data).signature)


def read_seq(net: SimNetwork, reader: Node, public: bytes, key: int) -> int | None:
    """The seq a namespace get of ``key`` by ``reader`` returns, None when the key is unset."""
    try:
        return net.run_call(net.call(reader, reader.namespace.get, public, key)).seq
    except NotFoundError:
        return None


def bounded_sim(net: SimNetwork, events: int = 20_000) -> SimNetwork:
    """``net``, failing the test once it has processed ``events`` events: a call that would run
    the simulator without end fails instead of hanging."""
    process = net._process
    count = itertools.count()

    def counted(event: tuple[float, int, int, Any]) -> None:
        if next(count) >= events:
            raise AssertionError(f"the simulator ran on past {events} events")
        process(event)

    net._process = counted  # type: ignore[method-assign]
    return net
