"""qadom's exception hierarchy.

Every error qadom raises on purpose derives from :class:`QadomError`, so one ``except`` catches
them all. Each class also derives from the builtin exception that a Python user would expect for
the same situation (``ValueError`` for a bad argument, ``KeyError`` for a missing key,
``TimeoutError``...), so code written against the builtin names keeps working.

Who is at fault is part of the name:

* :class:`UsageError` and its subclasses: the *local caller* passed something invalid. Nothing was
  sent and nothing was stored.
* :class:`ProtocolError`: a *remote peer* (or a corrupted datagram) broke the wire protocol.
* :class:`RemoteError`: a remote peer understood the request and refused it (it says why).
* :class:`NotFoundError`, :class:`OperationTimeout`, :class:`PeerClosedError`,
  :class:`SubscriptionClosed`: the state of the network or of the local objects.
"""

from __future__ import annotations

import os

REMOTE_TEXT_LIMIT = 120  # the characters of a remote peer's text an exception message keeps


def printable(text: str, limit: int | None = REMOTE_TEXT_LIMIT) -> str:
    """``text`` made safe to show on a terminal or to put in an exception message: its first
    ``limit`` characters (all of them if ``limit`` is None), each one that is not printable
    (control characters such as ESC, BEL or a newline, format characters such as a
    bidirectional override) replaced by ``?``.

    Text a remote peer sent (the reason of an ERROR reply) goes through this before it becomes
    part of an exception's message, so a peer can neither write terminal escape sequences to the
    operator's screen nor fill it."""
    if limit is not None:
        text = text[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)


class QadomError(Exception):
    """The root of every exception qadom raises on purpose."""


class UsageError(QadomError):
    """The caller used the API wrongly; nothing was sent and nothing was stored."""


class InvalidArgument(UsageError, ValueError):
    """An argument has the right type but a value out of range (a key >= 2**256, a bad port)."""


class SlowRequest(UsageError, TimeoutError):
    """An HTTP request's body did not arrive within ``Config.http_body_timeout`` (HTTP 408): a
    client that sends it a byte at a time would hold a handler for as long as it likes."""


class ValueTooLarge(InvalidArgument):
    """A value is larger than the configured maximum (8192 bytes by default)."""


class InvalidType(UsageError, TypeError):
    """An argument has the wrong type (``str`` where ``bytes`` are required, ``bool`` as a key)."""


class PeerClosedError(UsageError, RuntimeError):
    """The peer is not started yet, or has been closed."""


class SubscriptionMisuse(UsageError, RuntimeError):
    """A :class:`~qadom.subscription.Subscription` read before its ``async with`` block was
    entered, or entered a second time."""


class SubscriptionClosed(QadomError, RuntimeError):
    """A subscription was closed (:meth:`~qadom.subscription.Subscription.close`, from another
    task) while it was still registering: entering it raises this, and the node's call for it
    fails with it. Our own code ended it, not the network, so it is not a :class:`NoPeersError`
    or an :class:`OperationTimeout` that a retry could cure; subscribe again for a new one. The
    relays it had reached were sent UNSUBSCRIBE (unless another subscription of the same node to
    the topic still holds them)."""


class DataDirInUse(QadomError, RuntimeError):
    """Another peer (in this process or another) holds the data directory: two peers sharing one
    would share one id and one database. Nothing was opened."""


class LoopRunningError(UsageError, RuntimeError):
    """A blocking helper was called where its event loop is already running (a Jupyter cell, a
    coroutine): nothing was started; write ``await`` instead."""


class WrongLoopError(UsageError, RuntimeError):
    """A :class:`~qadom.peer.Peer` was used from an event loop other than the one it was started
    on (a loop in another thread, a later ``asyncio.run()``), or after that loop ended: a peer
    serves only on its own loop, while that loop runs. Nothing was started; use the peer from
    its loop, or close it and start a new one on this loop."""


class ProtocolError(QadomError):
    """Bytes from the network that are not a valid qadom message, or a reply that breaks the rules.

    Decoding arbitrary bytes raises this class and nothing else.
    """


class RemoteError(QadomError):
    """A remote peer refused a request with an error reply.

    ``code`` is one of the numeric codes in :class:`qadom.messages.ErrorCode`.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"remote refused ({code}): {reason}")
        self.code = code
        self.reason = reason


class StorageFull(QadomError):
    """A store refused an item because a quota (total, or per sending host) is exhausted; nothing
    stored changed. Remote peers report it as an ERROR reply with code STORAGE_FULL."""


class StorageUnavailable(StorageFull, OSError):
    """A durable store could not read or write now: its disk is read-only or failing, its file is
    damaged, or another program holds its database locked. Nothing stored changed. A
    :class:`StorageFull`, so whatever handles a refused write handles it too: a remote peer whose
    write it refused gets an ERROR STORAGE_FULL reply, upkeep skips the step, the HTTP helper
    answers 503. A request it kept the node from answering gets ERROR STORAGE_UNAVAILABLE; a get,
    search or namespace read whose local copy it kept from being read asks the network instead,
    and an operation that needed our own copy last (a /dht read no peer answered) fails with it."""


class StoreUnusable(QadomError, OSError):
    """The file cannot hold a qadom store: not an SQLite database, another program's database,
    one written by a newer qadom, or a file this process cannot open or write. Nothing in it was
    changed. An :class:`OSError` whose ``filename`` is the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(None, f"{path}: {reason}", str(path))

    def __str__(self) -> str:
        return str(self.strerror)


class NotFoundError(QadomError, KeyError):
    """No reachable peer holds the requested key."""

    def __str__(self) -> str:  # KeyError would show the repr of the message, quotes and all
        return str(self.args[0]) if self.args else "not found"


class OperationTimeout(QadomError, TimeoutError):
    """An operation did not complete within its deadline."""


class IncompleteSearch(OperationTimeout):
    """A search read part of a key's set and could not read the rest: a page failed (no answer,
    or an ERROR) at every peer holding the key that could be asked for it, or no page came for
    ``Config.operation_timeout``. ``values`` holds what was read, a part of the set: a search
    never returns a part as if it were the whole."""

    def __init__(self, message: str, values: set[int]) -> None:
        super().__init__(message)
        self.values = values


class OperationAbandoned(QadomError):
    """The caller stopped waiting for an operation (its task was cancelled): the node ended it as
    its deadline would have. Only the node's own bookkeeping sees it; the caller sees its
    cancellation."""


class NoPeersError(QadomError, ConnectionError):
    """A bootstrap reached none of the given addresses (or an operation found no peer to ask).
    ``only_ourselves`` is True when the one answer a bootstrap had came from this node itself:
    its addresses were this node's own."""

    only_ourselves = False


# --- signed records (the /dht records of qadom.dhtrecords) ---


class InvalidField(InvalidArgument):
    """One field of a structured request (a JSON body) is missing or invalid; ``field`` names it
    (dotted for nested fields, e.g. ``authorization.sign``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Unauthorized(QadomError, PermissionError):
    """A signed write was refused: its signature does not verify, it has already expired, or the
    record it would replace belongs to another key. Nothing was stored."""


class ServiceUnavailable(QadomError):
    """A front end cannot take this request now (the HTTP helper has all its event streams open,
    or is shutting down); trying again later may work."""


# --- signed namespaces (qadom.namespace) and publish/subscribe (qadom.pubsub) ---


class BadSignature(InvalidArgument):
    """A namespace record's signature does not verify with its public key over the documented
    signed bytes (or the public key is not a valid ed25519 key). Nothing was sent or stored."""


class StaleSequence(QadomError, ValueError):
    """A namespace write was refused because a replica holds a newer record (a higher ``seq``) or
    a different value under the same ``seq``; the stored record was kept. ``current`` is the
    ``seq`` held, when known."""

    def __init__(self, message: str, current: int | None = None) -> None:
        super().__init__(message)
        self.current = current


class TooManySubscribers(RemoteError):
    """Every relay asked refused a subscription: the topic already has the maximum number of
    subscribers there (``Config.pubsub_max_subscribers``)."""


class RateLimited(RemoteError):
    """Peers refused us for our rate: every relay asked refused a publish or a subscription
    (``Config.pubsub_rate`` messages per second, bursts of ``Config.pubsub_burst``), or a write
    (a set, an append, a namespace or /dht write) no peer took, which one of the peers asked
    refused for our requests, or which most
    of the peers that stayed silent had just refused for them (``Config.request_rate``: over it,
    a peer answers one refusal a second and drops the rest)."""
