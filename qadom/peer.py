"""The :class:`Peer` facade: qadom's public API on a real UDP socket.

```python
from qadom import Peer

async with Peer(host="127.0.0.1", port=0) as peer:
    await peer.bootstrap([("127.0.0.1", 9999)])
    key = await peer.set(b"sudo python")
    assert await peer.get(key) == b"sudo python"
```

Arguments are checked before anything is sent or stored: a bad one raises a subclass of
:class:`~qadom.errors.UsageError` that is also the builtin ``ValueError`` or ``TypeError``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ipaddress
import logging
import os
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from .call import Call
from .codec import Codec
from .config import Config
from .contact import Address, Contact, check_bind_host, format_address, is_ip_literal
from .errors import (
    DataDirInUse,
    InvalidArgument,
    InvalidType,
    OperationAbandoned,
    PeerClosedError,
    ProtocolError,
    StorageFull,
    StoreUnusable,
    WrongLoopError,
)
from .ids import ID_BYTES, check_id, id_from_bytes, id_to_bytes, random_id
from .messages import Envelope, Kind, Message
from .namespace import NamespaceRecord, check_public_key
from .node import Node
from .routing import RoutingTable
from .sqlite_store import SqliteStore
from .storage import Store
from .subscription import Subscription
from .transport import NodeProtocol, run_in_loop, running_loop

T = TypeVar("T")
_MISSING: Any = object()
_SOCKET_LOST = ("the peer's socket was closed by an error (see the qadom log); close this peer "
                "and start a new one")
log = logging.getLogger("qadom")


class Peer:
    """One qadom peer: a :class:`~qadom.node.Node` served on a UDP socket by asyncio.

    Nothing happens on construction but checking the arguments; :meth:`start` binds the socket
    (``port=0`` picks a free port; read it back from :attr:`address`; ``host=""`` binds every
    IPv4 interface, as ``"0.0.0.0"`` does, ``"::"`` every IPv6 one). Every method that needs
    the running node raises :class:`~qadom.errors.PeerClosedError` before :meth:`start`, after
    :meth:`close`, and once an error has closed the socket (see :attr:`running`).

    With ``data_dir`` the peer keeps its id, contacts and data in SQLite there and holds an
    exclusive lock on the directory while it runs (:class:`~qadom.errors.DataDirInUse` for a
    second peer, in this process or another).

    ``rng`` draws the node's id (without ``node_id``), its request ids, its token secrets and the
    targets of its refreshes. The default is the operating system's generator
    (:class:`random.SystemRandom`). A seeded :class:`random.Random` makes a run repeatable, for
    tests and benchmarks, but anyone who sees a few hundred of its request ids can then predict
    the rest and forge the node's tokens: never give one to a peer that others can reach.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, config: Config | None = None,
                 node_id: int | None = None, store: Store | None = None,
                 data_dir: str | os.PathLike[str] | None = None,
                 rng: random.Random | None = None, client_only: bool = False) -> None:
        check_bind_host(host)
        check_port(port)
        if store is not None and data_dir is not None:
            raise InvalidArgument("give a store or a data_dir, not both")
        if config is not None and not isinstance(config, Config):
            raise InvalidType(f"config must be a qadom.Config, not {type(config).__name__}")
        if store is not None and not isinstance(store, Store):
            raise InvalidType(f"store must be a qadom Store (MemoryStore, SqliteStore), not "
                              f"{type(store).__name__}")
        if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
            raise InvalidType(f"data_dir must be a str or a path, not {type(data_dir).__name__}")
        if rng is not None and not isinstance(rng, random.Random):
            raise InvalidType(f"rng must be a random.Random, not {type(rng).__name__}")
        if not isinstance(client_only, bool):
            raise InvalidType("client_only must be a bool")
        self.host = host
        self.port = port
        self.config = config or Config()
        self._rng = rng or random.SystemRandom()
        self._fixed_id = node_id is not None
        self._node_id = check_id(node_id, "node_id") if node_id is not None else random_id(
            self._rng)
        self._store = store
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._client_only = client_only
        self._node: Node | None = None
        self._protocol: NodeProtocol | None = None
        self._futures: set[asyncio.Future[Any]] = set()
        self._subscriptions: set[Subscription] = set()
        self._closed = False
        self._address: Address | None = None
        self._lock: IO[bytes] | None = None  # held on data_dir while the peer runs
        self._starting: asyncio.Lock | None = None
        self._binding: asyncio.Future[None] | None = None  # done once a start under way is over

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Bind the UDP socket and start serving. Idempotent: concurrent calls bind one socket.
        A :meth:`close` while starting wins: the socket is closed again and PeerClosedError
        raised. A ``host`` that does not resolve raises InvalidArgument naming it, nothing left
        bound and the data dir released; ``""`` binds 0.0.0.0 (every IPv4 interface). Started
        at a terminal IPython prompt, the peer keeps serving while the prompt waits
        (:func:`qadom.interactive.serve_at_prompt`)."""
        if self._protocol is not None:
            _check_loop(self._protocol.loop)  # started already, on another loop
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._closed:
                raise PeerClosedError("this peer was closed; make a new one")
            if self._protocol is None:
                await self._bind()
        if "IPython" in sys.modules:  # else no prompt can be waiting
            from .interactive import serve_at_prompt

            serve_at_prompt(self)

    async def _bind(self) -> None:
        binding = self._binding = asyncio.get_running_loop().create_future()
        try:
            await self._bind_socket()
        finally:
            self._binding = None
            if not binding.get_loop().is_closed():  # else it is dropped, its loop gone
                binding.set_result(None)

    async def _bind_socket(self) -> None:
        loop = asyncio.get_running_loop()
        if self.data_dir is not None and self._store is None:
            self._lock = _lock_data_dir(self.data_dir)
            try:
                self._store = self._open_data_dir(self.data_dir)
            except BaseException:
                self._unlock()
                raise

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        def make_node(now: float) -> Node:
            node = Node(config=self.config, rng=self._rng, node_id=self._node_id,
                        store=self._store, now=now, client_only=self._client_only)
            node.ipv6 = family == socket.AF_INET6
            return node

        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: NodeProtocol(make_node, loop, self._socket_lost),
                local_addr=(self.host or "0.0.0.0", self.port),  # "": every interface
                family=family)
        except BaseException as exc:  # the port is taken, say: do not leave the data dir open
            self._close_data_dir()
            if isinstance(exc, socket.gaierror):  # the resolver's error does not name the host
                raise InvalidArgument(
                    f"cannot resolve {self.host!r}: {exc.strerror or exc}") from None
            raise
        if self._closed:  # close() ran while the socket was being bound
            transport.close()
            self._close_data_dir()
            raise PeerClosedError("the peer was closed while it was starting")
        self._protocol = protocol
        self._node = protocol.node
        if self.config.socket_receive_buffer:
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):  # a loop without a socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                self.config.socket_receive_buffer)
        sockname = transport.get_extra_info("sockname")
        self._address = (sockname[0], sockname[1])
        protocol.node.address = self._address
        protocol.flush()

    def _close_data_dir(self) -> None:
        """Close the store this peer opened in ``data_dir`` and release the directory."""
        if self.data_dir is not None and self._store is not None:
            self._store.close()
            self._store = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases its lock
            self._lock = None

    async def close(self) -> None:
        """Stop serving and close the socket; pending operations fail with PeerClosedError, and
        open subscriptions end, their relays told (UNSUBSCRIBE) while the socket is still open.
        A start under way is waited for, on this loop or another thread's: once this returns,
        the peer holds nothing (a start whose loop stopped halfway is released here).

        Called from another thread's loop while the peer's own loop runs, the close runs on the
        peer's loop and this waits for it. Once the peer's loop has ended (the peer was started
        under an earlier ``asyncio.run()``, here or in another thread), the socket, the store
        and the data dir are released at once, here, from any thread; the relays of its
        subscriptions are not told (they drop it when its lease runs out). So too when the
        peer's loop stands idle, neither running nor closed, and another loop calls this (the
        relays are told then), and when the peer's loop stops before it could run the close.
        Whatever fails on the way, the socket, the store and the data dir lock are released;
        WrongLoopError after the release when the socket of an ended or idle loop could not be
        reached (a loop that does not expose it)."""
        protocol = self._protocol
        here = asyncio.get_running_loop()
        binding = self._binding
        if protocol is None and binding is not None and binding.get_loop() is not here:
            await self._close_while_binding_elsewhere(binding)
            protocol = self._protocol  # a start that saw no close yet has bound it meanwhile
        if protocol is not None and protocol.loop is not here and protocol.loop.is_running():
            def close_there() -> None:
                self._close_now()

            # In another thread: close it there, unless that loop stops first.
            if await run_in_loop(protocol.loop, close_there):
                return
        ended = self._close_now()
        binding = self._binding
        if binding is not None and binding.get_loop() is here:
            await asyncio.wait({binding})  # the start sees the close and releases what it bound
        if not ended:
            await asyncio.sleep(0)  # let the transport's connection_lost run

    async def _close_while_binding_elsewhere(self, binding: asyncio.Future[None]) -> None:
        """A close while a start binds on another thread's loop: the start sees the close once
        its bind is over, and releases what it bound; this waits for that, there. If that loop
        stops with the start unfinished (it may never run again, and nothing runs there now),
        the store and the data dir are released here instead."""
        self._closed = True
        there = binding.get_loop()
        if there.is_running():
            await run_in_loop(there, lambda: binding)
        if not binding.done() and not there.is_running():
            self._close_data_dir()

    def _close_now(self) -> bool:
        """What :meth:`close` does, at once, on the peer's loop or (that loop not running)
        here. True when the peer's loop has ended."""
        protocol = self._protocol
        self._closed = True
        ended = protocol is not None and protocol.loop.is_closed()
        if protocol is not None and protocol.transport is not None and not ended:
            for subscription in list(self._subscriptions):
                try:
                    subscription._peer_closed()  # sends UNSUBSCRIBE, then ends its iteration
                except Exception:  # a bug: the socket, the data dir and the waiters still go
                    log.exception("could not unsubscribe %r while closing", subscription)
        self._protocol = None
        socket_closed = True
        try:
            if protocol is not None:
                socket_closed = protocol.close()
        finally:
            if protocol is not None and self.data_dir is not None:
                store = protocol.node.store
                try:
                    protocol.node.save_contacts()
                except Exception as exc:  # a full disk, say: those saved by the last upkeep stay
                    log.warning("could not save contacts in %s: %s", self.data_dir, exc)
                finally:
                    try:
                        store.close()
                    finally:
                        self._store = None
                        self._unlock()
            self._fail_pending("the peer was closed")
        if not socket_closed:
            raise WrongLoopError("the event loop this peer was started on is not running, and "
                                 "its socket could not be closed from here: close a peer on "
                                 "its own loop, before that loop ends")
        return ended

    def _socket_lost(self) -> None:
        """The socket was closed: by :meth:`close`, or under a running peer by an error the loop
        treats as fatal. The node's timers went with it, so what waits on the node would wait
        forever: it fails now."""
        if not self._closed:
            self._fail_pending(_SOCKET_LOST)

    def _fail_pending(self, reason: str) -> None:
        """End every operation and subscription in progress with PeerClosedError(reason)."""
        for future in list(self._futures):
            if not future.done() and not future.get_loop().is_closed():
                future.set_exception(PeerClosedError(reason))
        self._futures.clear()
        for subscription in list(self._subscriptions):
            subscription._peer_closed()

    async def __aenter__(self) -> Peer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ state

    @property
    def id(self) -> int:
        """This peer's 256-bit node id."""
        return self._node_id

    @property
    def node(self) -> Node:
        """The protocol core (routing table, store, stats); for inspection."""
        if self._node is None:
            raise PeerClosedError("the peer is not started")
        return self._node

    @property
    def routing_table(self) -> RoutingTable:
        return self.node.table

    @property
    def stats(self) -> Counter[str]:
        """A copy of the node's counters, by name: a counter that has not counted yet reads 0
        (``peer.stats["pubsub_dropped"]``), as in ``peer.node.stats``."""
        return Counter(self.node.stats)

    @property
    def running(self) -> bool:
        """Started, not closed, and its socket open (an error the event loop treats as fatal
        closes the socket: logged on the ``qadom`` logger and counted as ``socket_lost``; the
        operations and subscriptions in progress then end with PeerClosedError), on an event loop
        that has not ended (a peer serves only while the loop it was started on runs)."""
        protocol = self._protocol
        return (protocol is not None and protocol.transport is not None
                and not protocol.loop.is_closed())

    @property
    def closed(self) -> bool:
        """:meth:`close` was called (a closed peer cannot start again)."""
        return self._closed

    @property
    def address(self) -> Address:
        """The bound (host, port), known once :meth:`start` has bound the socket (and kept after
        :meth:`close`); PeerClosedError before."""
        if self._address is None:
            raise PeerClosedError("the peer is not started: await peer.start() first")
        return self._address

    def add_listener(self, fn: Any) -> Any:
        """Receive every :class:`~qadom.events.LookupEvent`; returns an unsubscribe function.
        InvalidType unless ``fn`` is callable; what ``fn`` raises is logged and counted
        (``stats["listener_errors"]``), never passed to the lookup."""
        listener: Any = fn
        return self.node.add_listener(listener)

    def contact(self) -> Contact:
        """This peer as a contact (id and bound address)."""
        return Contact(self.id, self.address)

    # ------------------------------------------------------------------ the API

    async def bootstrap(self, addresses: Iterable[tuple[str, int]] | None = None) -> int:
        """Join the network through any of ``addresses``: ping them, look up our own id and
        refresh our buckets (paper section 2.3). Returns the routing table's size. Raises
        NoPeersError when none answers. Host names are resolved first, in our socket's IP
        family. An IP address of the other family (one UDP socket reaches one family) is
        skipped when at least one address is not; when every one is, InvalidArgument names the
        first and both families.

        Without ``addresses``, rejoin through the contacts saved in the store (a peer restarted
        with the same ``data_dir``); InvalidArgument if none were saved. Cancelling it stops the
        join: no new request is sent (those already out run their course)."""
        protocol = self._running()
        if addresses is None:
            saved = [c.address for c in protocol.node.store.load_contacts()]
            if not saved:
                raise InvalidArgument("no saved contacts to rejoin from; give addresses")
            return await self._run(protocol.node.bootstrap(saved, protocol.now()))
        checked = _check_addresses(addresses)
        ours = [address for address in checked if self._other_family(address) is None]
        if not ours:
            version = self._other_family(checked[0])
            assert version is not None
            raise self._unreachable(checked[0], version)
        resolved = [await self._resolve(address) for address in ours]
        protocol = self._running()  # closed while resolving: start nothing
        return await self._run(protocol.node.bootstrap(resolved, protocol.now()))

    async def ping(self, address: tuple[str, int]) -> Contact:
        """The contact answering at ``address`` (OperationTimeout if nobody does).
        InvalidArgument, nothing sent, for an IP address of the other family than our
        socket's, which cannot reach it."""
        protocol = self._running()
        (checked,) = _check_addresses([address])
        resolved = await self._resolve(checked)
        protocol = self._running()  # closed while resolving: start nothing
        return await self._run(protocol.node.ping(resolved, protocol.now()))

    async def set(self, value: bytes) -> int:
        """Store ``value`` (bytes, at most 8192) at the k closest peers and here; returns its key,
        the SHA-256 of the value as an int, once a peer stored it (one of them, or one the
        lookup met on the way, which republishes it to them within the hour).

        When there were peers to ask and none stored it, raises StorageFull (each that refused
        was full), RateLimited (one refused it for our rate, or most of those that stayed silent
        had just refused us for it), RemoteError (another refusal) or OperationTimeout (none
        answered, not for our rate, or every contact we know failed of late), and nothing
        is stored here: try again later. RateLimited too, nothing stored here, when k live
        peers are closer to the key than every peer that stored it and one of them refused us
        for our rate (a reader's lookup would end among them). StorageFull at once, nothing
        sent, when this peer's own store has no room for it. A peer that knows no other stores
        it here alone, and hands it to peers as they join."""
        protocol = self._running()
        return await self._run(protocol.node.set(value, protocol.now()))

    async def get(self, key: int) -> bytes:
        """The value stored under ``key``; raises KeyError (NotFoundError) when no peer has it,
        NoPeersError when this peer knows no other and OperationTimeout when none answered, or
        when more of the peers nearest the key failed to answer than answered without it (they
        may hold it: docs/PROTOCOL.md, "Lookups")."""
        protocol = self._running()
        return await self._run(protocol.node.get(key, protocol.now()))

    async def append(self, key: int, value: int) -> None:
        """Add ``value`` to the set stored under ``key`` (both ints in [0, 2**256)), at the k
        closest peers and here; fails as :meth:`set` does when none of them stored it."""
        protocol = self._running()
        await self._run(protocol.node.append(key, value, protocol.now()))

    async def search(self, key: int) -> builtins.set[int]:
        """Every value appended under ``key`` that the k closest peers hold; empty when none. Raises
        NoPeersError when this peer holds none and knows no other peer, OperationTimeout when none
        answered, or when none was read and more of the peers nearest the key failed to answer than
        answered (as :meth:`get`). A set larger than one page (``Config.search_page_size`` values)
        is read page by page, and a page one peer does not serve is asked of another that holds the
        key: when none serves it, or no page comes for ``Config.operation_timeout``, this raises
        IncompleteSearch (an OperationTimeout whose ``values`` holds what was read), never returning
        part of the set as the whole. A read whose pages keep coming is not cut short by the
        operation timeout, however long it takes. At most ``Config.max_search_pages`` pages (160 000
        values) are read from each peer: a key holding more is read in part."""
        protocol = self._running()
        return await self._run(protocol.node.search(key, protocol.now()))

    async def key(self, key: int, value: int = _MISSING) -> Any:
        """``key(key, value)`` appends, ``key(key)`` searches: the spelling of qadom's original
        README."""
        if value is _MISSING:
            return await self.search(key)
        return await self.append(key, value)

    async def request(self, address: tuple[str, int], message: Message) -> Message:
        """Send one raw protocol request to ``address`` and return the reply (tools, tests). A
        field the wire cannot carry as it is raises InvalidType (wrong type) or InvalidArgument
        (out of its range) before anything is sent."""
        protocol = self._running()
        (checked,) = _check_addresses([address])
        if not isinstance(message, Message) or not message.IS_REQUEST:
            raise InvalidType(f"message must be a request Message (Ping, FindNode...), not "
                              f"{type(message).__name__}")
        _check_wire_fields(protocol.node.codec, message)
        resolved = await self._resolve(checked)  # replies come from the address, not the name
        protocol = self._running()  # closed while resolving: start nothing
        return await self._run(protocol.node.ask(resolved, message, protocol.now()))

    def forget(self, key: int) -> bool:
        """Stop republishing ``key`` (a value or multimap entries we published); it then
        expires everywhere ``expire_time`` after our last republish. True if it was ours."""
        return self._running().node.forget(key)

    def saved_contacts(self) -> list[Contact]:
        """The contacts the store keeps for a rejoin, which :meth:`bootstrap` without addresses
        pings: a data dir's outlive the process, for a restart; a memory store's (the default,
        or one given as ``store``) live as long as the store does."""
        return self._running().node.store.load_contacts()

    async def find_nodes(self, target: int) -> list[Contact]:
        """The k closest contacts to ``target`` in the network that answered the lookup,
        closest first, never this peer. Never empty: NoPeersError when this peer knows no other,
        OperationTimeout when none answered (as :meth:`get` fails)."""
        protocol = self._running()
        return await self._run(protocol.node.find_nodes(target, protocol.now()))

    async def refresh(self, *, all_buckets: bool = False) -> None:
        """Refresh stale buckets now (all of them with ``all_buckets``, a bool)."""
        protocol = self._running()
        if not isinstance(all_buckets, bool):
            raise InvalidType(f"all_buckets must be a bool, not {type(all_buckets).__name__}")
        await self._run(protocol.node.refresh(protocol.now(), all_buckets=all_buckets))

    async def run_service(self, start: Callable[[Node, float], Call[T]]) -> T:
        """Run one operation of a Node service (``node.dht_records``...): ``start(node, now)``
        begins it and returns its Call, awaited like any Peer operation. Front ends reach
        services that have no Peer method of their own this way."""
        protocol = self._running()
        if not callable(start):
            raise InvalidType(f"start must be callable, not {type(start).__name__}")
        call = start(protocol.node, protocol.now())
        if not isinstance(call, Call):
            raise InvalidType(f"start must return the operation's Call, not "
                              f"{type(call).__name__}")
        return await self._run(call)

    # ------------------------------------------------------------------ namespaces, pubsub

    async def namespace_set(self, public_key: bytes, signature: bytes, key: int, value: bytes,
                            seq: int = 0) -> int:
        """Store version ``seq`` of ``key`` in the namespace of ``public_key`` (32 bytes), signed
        with ``signature`` (64 bytes, ed25519 over :func:`qadom.namespace.signing_bytes`); value
        bytes of at most 8192, seq an int in [0, 2**63). Returns how many replicas stored it (0
        on a peer that knows no other). Raises BadSignature or StorageFull (this peer has no
        room for it) with nothing sent, StaleSequence when a newer version is stored, and as
        :meth:`set` does when there were peers to ask and none stored it (OperationTimeout,
        RateLimited, StorageFull...): :meth:`NamespaceService.set
        <qadom.namespace.NamespaceService.set>` says when each applies."""
        protocol = self._running()
        record = NamespaceRecord.checked(public_key, key, seq, value, signature,
                                         max_value_size=self.config.max_value_size)
        return await self._run(protocol.node.namespace.set(record, protocol.now()))

    async def namespace_get(self, public_key: bytes, key: int) -> bytes:
        """The newest value of ``key`` in the namespace of ``public_key``; KeyError
        (NotFoundError) when none, OperationTimeout when more of the peers nearest it failed to
        answer than answered (as :meth:`get`)."""
        return (await self.namespace_get_record(public_key, key)).value

    async def namespace_get_record(self, public_key: bytes, key: int) -> NamespaceRecord:
        """The newest signed record of ``key`` (value, seq and signature); KeyError when none."""
        protocol = self._running()
        check_public_key(public_key)
        check_id(key)
        return await self._run(protocol.node.namespace.get(public_key, key, protocol.now()))

    def namespace_forget(self, public_key: bytes, key: int) -> bool:
        """Stop republishing ``key`` of the namespace of ``public_key`` (a record this peer
        stored with :meth:`namespace_set`); it then expires everywhere ``expire_time`` after our
        last republish. True if it was ours, or a :meth:`namespace_set` of it is on its way: that
        record is then neither kept here as ours nor renewed (a set asked for after the forget
        is, as usual)."""
        return self._running().node.namespace.forget(public_key, key)

    def dht_forget(self, key: str) -> bool:
        """Stop republishing the /dht record of ``key`` that this peer wrote (the HTTP helper's
        ``POST /dht/{key}``); it then expires everywhere ``expire_time`` after our last
        republish. True if it was ours, or a put of it is on its way: that record is then
        neither kept here as ours nor renewed (a put asked for after the forget is, as usual).
        InvalidType unless ``key`` is a str; InvalidField when it is empty, longer than
        ``dht_max_key_size`` bytes or not valid text."""
        records = self._running().node.dht_records
        if not isinstance(key, str):
            raise InvalidType(f"key must be a str, not {type(key).__name__}")
        return records.forget(key)

    async def publish(self, key: int, value: bytes) -> int:
        """Send ``value`` (bytes, at most 8192) to the subscribers of topic ``key``; returns how
        many relays accepted it (at least one). Raises RateLimited when every relay refused for
        our rate, OperationTimeout when no relay answered, and NoPeersError when no peer is
        known to relay the topic (as :meth:`subscribe` does); RateLimited too when the lookup of
        the relays was refused for our request rate, or most of the peers that did not answer it
        had just refused us for it. An OperationTimeout does not mean nobody
        got it: a relay may have delivered it and its answer been lost or late, so a publisher
        that sends it again may deliver it twice. Nor does a RateLimited when this peer is
        itself among the topic's relays: it passes its own message on to the subscribers
        registered with it at once. RateLimited too, at once and nothing sent, when publishes to
        ``pubsub_max_topics`` other topics are all still waiting for the lookups of their relays
        (see :meth:`PubSubService.publish <qadom.pubsub.PubSubService.publish>`)."""
        protocol = self._running()
        return await self._run(protocol.node.pubsub.publish(key, value, protocol.now()))

    def subscribe(self, key: int) -> Subscription:
        """``async with peer.subscribe(key) as messages: async for value in messages: ...``;
        leaving the block (or cancelling) unsubscribes. See
        :class:`~qadom.subscription.Subscription`."""
        self._running()
        return Subscription(self, check_id(key))

    # ------------------------------------------------------------------ internals

    def _open_data_dir(self, data_dir: Path) -> Store:
        """Open the SQLite store in ``data_dir`` and adopt the node id saved there (or save
        ours): a peer restarted with the same data dir is the same node. What expired while the
        node was down is dropped before it serves anything (the node's clock is Unix time), not
        a maintenance interval later. The node stores every value under its SHA-256, so the
        store serves none read under another key (``content_addressed``: its row or index was
        damaged). StoreUnusable (an OSError naming the file, which is left as it was) when the
        file there cannot be a qadom store, or when the node id saved in it is damaged (not 32
        bytes: adopting it would make another node); StorageUnavailable when its disk is too
        full to open it."""
        store = SqliteStore(data_dir / "qadom.sqlite3", self.config, content_addressed=True)
        try:
            saved = store.get_meta("node_id")
            if saved is not None and len(saved) != ID_BYTES:
                raise StoreUnusable(store.path, f"damaged node id ({len(saved)} bytes, not "
                                    f"{ID_BYTES})")
            if saved is None:
                store.set_meta("node_id", id_to_bytes(self._node_id))
            elif self._fixed_id and id_from_bytes(saved) != self._node_id:
                raise InvalidArgument(f"{data_dir} belongs to node {id_from_bytes(saved)}")
            else:
                self._node_id = id_from_bytes(saved)
            with contextlib.suppress(StorageFull):  # a full disk: the first upkeep tries again
                # Everything that expired while the node was down goes before it serves.
                while 0 < store.expire_batch <= store.expire(time.time()):
                    pass
        except BaseException:
            store.close()
            raise
        return store

    def _running(self) -> NodeProtocol:
        """The running peer's protocol, for an operation to start on. PeerClosedError when the
        peer is not running; WrongLoopError, before anything is started, when called from
        another event loop than the peer's (or after the peer's loop ended)."""
        protocol = self._protocol
        if protocol is None:
            raise PeerClosedError("the peer is closed" if self._closed else
                                  "the peer is not started: await peer.start() first")
        _check_loop(protocol.loop)
        if protocol.transport is None:
            raise PeerClosedError(_SOCKET_LOST)
        return protocol

    async def _run(self, call: Call[T]) -> T:
        """Wait for ``call``. A wait that is cancelled (``task.cancel()``, ``asyncio.wait_for``
        running out) ends ``call`` in the node as its deadline would, so that its lookup stops
        asking rather than run on with nobody waiting; so does any exception that ends the wait
        before ``call`` completes, even one raised while its first datagrams are sent (a
        KeyboardInterrupt that a signal raises there)."""
        protocol = self._running()
        future = protocol.future_of(call)
        self._futures.add(future)
        try:
            protocol.flush()  # sends what starting the call queued, once the future is ours
            return await future
        except BaseException:
            # A future done with an outcome (the call's, or PeerClosedError as the peer closed)
            # leaves the call alone; otherwise nobody waits for it any more. A future still
            # pending is cancelled first, so that the call's failure is not left in it unread.
            how = "cancelled" if future.cancelled() else "interrupted"
            if (future.cancelled() or future.cancel()) and not call.done:
                call.fail(OperationAbandoned(f"{call.name or 'the operation'} was {how}"))
                if not protocol.loop.is_closed():
                    protocol.flush()  # the node's timer, which the flush may not have re-armed
            raise
        finally:
            self._futures.discard(future)

    def _other_family(self, address: Address) -> int | None:
        """The IP version of ``address`` if it is an IP literal of the other family than our
        socket's (which cannot reach it); None for one of ours and for a host name."""
        with contextlib.suppress(ValueError):
            version = ipaddress.ip_address(address[0]).version
            if version != self._version():
                return version
        return None

    def _version(self) -> int:
        """Our socket's IP version (the family :meth:`_bind_socket` binds)."""
        return 6 if ":" in self.host else 4

    def _unreachable(self, address: Address, version: int) -> InvalidArgument:
        """The error for ``address``, an IP address of IP version ``version`` that our socket
        cannot reach, naming it and both families as the CLI and HTTP API do."""
        return InvalidArgument(
            f"{format_address(address)} is an IPv{version} address and this peer's socket is "
            f"IPv{self._version()}: it cannot reach it")

    async def _resolve(self, address: Address) -> Address:
        host, port = address
        family = socket.AF_INET6 if self._version() == 6 else socket.AF_INET
        if "%" in host and not is_ip_literal(host):
            raise InvalidArgument(f"{host!r} has an IPv6 zone that names no interface")
        other = self._other_family(address)
        if other is not None:  # the resolver would call it a name it cannot resolve
            raise self._unreachable(address, other)
        with contextlib.suppress(ValueError):
            # An IP literal of our socket's family needs no resolver (asyncio's getaddrinfo runs
            # in a thread pool even for literals: tens of microseconds per call). It is spelled
            # as the socket reports the addresses datagrams come from, so that replies match the
            # requests sent: an IPv4-mapped one with its IPv4 part dotted ("::ffff:127.0.0.1",
            # where ipaddress writes "::ffff:7f00:1").
            literal = ipaddress.ip_address(host)
            if isinstance(literal, ipaddress.IPv6Address) and literal.ipv4_mapped is not None:
                return (f"::ffff:{literal.ipv4_mapped}", port)
            return (str(literal), port)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
        except (OSError, UnicodeError) as exc:  # UnicodeError: not a valid name ("a..b")
            raise InvalidArgument(f"cannot resolve {host!r}: {exc}") from None
        sockaddr = infos[0][4]
        return (str(sockaddr[0]), int(sockaddr[1]))

    def __repr__(self) -> str:
        where = (format_address(self._address) if self.running and self._address
                 else "closed" if self._closed else "not started")
        return f"<Peer {self.id:064x}"[:14] + f"… {where}>"


_WIRE_TYPES: dict[Kind, tuple[type, ...]] = {
    Kind.ID: (int,), Kind.OPT_ID: (int, type(None)), Kind.VALUE: (bytes,), Kind.BOOL: (bool,),
    Kind.UINT16: (int,), Kind.UINT64: (int,), Kind.TEXT: (str,), Kind.CONTACTS: (tuple,),
    Kind.IDS: (tuple,), Kind.SHORT_BYTES: (bytes,)}
"""The Python types a message field of each kind holds (``bool`` only for BOOL)."""


def _check_wire_fields(codec: Codec, message: Message) -> None:
    """Refuse a request whose fields the wire cannot carry as they are: InvalidType for a field
    of the wrong type, InvalidArgument for one out of its kind's range (an id of 2**256, a
    negative ttl), which the receiver would drop as malformed after every attempt."""
    name = type(message).__name__
    for field, kind in message.FIELDS:
        value = getattr(message, field)
        if not isinstance(value, _WIRE_TYPES[kind]) or (
                isinstance(value, bool) and kind is not Kind.BOOL):
            wanted = " or ".join(t.__name__ for t in _WIRE_TYPES[kind])
            raise InvalidType(f"{name}.{field} must be {wanted}, not {type(value).__name__}")
    try:  # what the receiver will decode must be what was meant
        decoded = codec.decode(codec.encode(Envelope(0, None, message))).message
        same = all(getattr(decoded, field) == getattr(message, field)
                   for field, _ in message.FIELDS)
    except InvalidArgument:
        raise
    except (ProtocolError, OverflowError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"{name} cannot be sent: {exc}") from None
    if not same:
        raise InvalidArgument(f"{name} cannot be sent: a field does not survive the wire")


def _check_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Nothing if the peer whose loop is ``loop`` may be used here: on that loop, or from no
    running loop while that one is not running either (plain code between two
    ``loop.run_until_complete`` calls). WrongLoopError otherwise: the peer's node is driven by
    its loop alone, so an operation from another loop (another thread's, or a later
    ``asyncio.run()``) would race that loop, and could never be awaited here."""
    current = running_loop()
    if current is loop:
        return
    if loop.is_closed():
        raise WrongLoopError("the event loop this peer was started on has ended (a peer serves "
                             "only while its loop runs: start, use and close it under one "
                             "asyncio.run()); close it and start a new peer on this loop")
    if current is not None or loop.is_running():
        raise WrongLoopError("this peer runs on another event loop (another thread's, or an "
                             "earlier asyncio.run()'s): use it from that loop "
                             "(asyncio.run_coroutine_threadsafe from another thread)")


def check_port(port: object) -> int:
    """``port`` if a socket may bind it: an int in [0, 65535] (0 picks a free one; ``bool``
    refused); InvalidType / InvalidArgument otherwise."""
    if not isinstance(port, int) or isinstance(port, bool):
        raise InvalidType("port must be an int")
    if not 0 <= port < 65536:
        raise InvalidArgument(f"port must be in [0, 65535], got {port}")
    return port


def _check_addresses(addresses: Iterable[tuple[str, int]]) -> list[Address]:
    """Peers to reach: (host, port) pairs with a non-empty host free of NUL characters and a port
    in [1, 65535] (port 0 names no peer)."""
    if isinstance(addresses, (str, bytes)) or not isinstance(addresses, Iterable):
        raise InvalidType("addresses must be a list of (host, port) pairs")
    checked: list[Address] = []
    for item in addresses:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InvalidType(f"address must be a (host, port) pair, not {item!r}")
        host, port = item
        if not isinstance(host, str) or not host:
            raise InvalidType("host must be a non-empty str")
        if "\0" in host:  # the resolver would read the name up to it: another host
            raise InvalidArgument(f"host {host!r} contains a NUL character")
        if check_port(port) == 0:
            raise InvalidArgument(f"port 0 names no peer ({host}:0)")
        checked.append((host, port))
    if not checked:
        raise InvalidArgument("need at least one address")
    return checked


def _lock_data_dir(data_dir: Path) -> IO[bytes]:
    """Create ``data_dir`` if needed and hold an exclusive lock on it (a ``peer.lock`` file kept
    open): two peers sharing a directory would share one id and one database. The lock goes with
    the file, so with the process however it ends. DataDirInUse when another holds it;
    StoreUnusable naming the path when it, or a parent, is not a directory; OSError (with the
    path) when the directory cannot be used otherwise."""
    try:
        os.makedirs(data_dir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # "File exists" would not say what is wrong
        blocker = next((path for path in (data_dir, *data_dir.parents)
                        if os.path.lexists(path) and not path.is_dir()), data_dir)
        reason = ("not a directory" if blocker == data_dir
                  else f"{str(blocker)!r} is not a directory")
        raise StoreUnusable(data_dir, reason) from None
    lock = open(data_dir / "peer.lock", "ab")  # noqa: SIM115 (held open while the peer runs)
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: one peer per directory is up to us
        return lock
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise DataDirInUse(f"data dir {str(data_dir)!r} is in use by another qadom peer") from None
    return lock
