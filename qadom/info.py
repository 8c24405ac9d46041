"""The operator's summary of a running node: the INFO request and the service that answers it.

``qadom info`` asks a node on the same machine what it is doing: its id and address, how full its
routing table is, what it stores, how long it has been up. The answer is a small JSON document
(:meth:`InfoService.summary`) carried in one :class:`InfoReply`.

Guarantees:

* INFO is answered only to requests whose source address is loopback (``127.0.0.0/8`` or
  ``::1``, also as an IPv4-mapped IPv6 address): the summary is for the operator of the machine,
  not for the network. Any other source gets an :class:`~qadom.messages.Error` reply with
  :attr:`~qadom.messages.ErrorCode.UNSUPPORTED`, exactly as for a request the node does not serve.
* The document always fits in one reply: it is at most ``Config.max_value_size`` bytes of UTF-8
  JSON (details are dropped, counters first, before that could be exceeded).
* A reply that is not a JSON object fails the query with :class:`~qadom.errors.ProtocolError`;
  so does one holding ``NaN``, ``Infinity`` or a number too large for a float (``1e400``),
  which Python's parser would take but which are not JSON: a summary that was accepted can be
  written out again as valid JSON (``qadom info --json``).

Wire messages: request 20 (:class:`InfoRequest`), reply 84 (:class:`InfoReply`), in the block of
codes reserved for running a durable node. This module is pure: time comes in as ``now``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .call import Call
from .contact import Address, ip_of
from .contact import format_address as format_address  # re-exported for the front ends
from .errors import OperationTimeout, ProtocolError, RemoteError, printable
from .messages import Envelope, Error, ErrorCode, Kind, Message, register

if TYPE_CHECKING:
    from .node import Node


@dataclass(frozen=True, slots=True)
class InfoRequest(Message):
    """What is this node doing? Answered by :class:`InfoReply` to loopback sources only."""

    CODE = 20
    IS_REQUEST = True
    LARGE_REPLY = True


@dataclass(frozen=True, slots=True)
class InfoReply(Message):
    """The node's summary: UTF-8 JSON (see :meth:`InfoService.summary`)."""

    CODE = 84
    IS_REQUEST = False
    FIELDS = (("document", Kind.VALUE),)
    document: bytes


for _cls in (InfoRequest, InfoReply):
    register(_cls)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP literal) is a loopback address; anything unparsable is not.
    The node asks this for every request it rate-limits, so the common forms are settled
    without parsing."""
    if host.startswith("127.") or host == "::1":
        return True
    address = ip_of(host)
    return address is not None and address.is_loopback


class InfoService:
    """Answers INFO for its :class:`~qadom.node.Node` and asks other nodes for theirs; attached
    to the node as ``node.info``. ``now`` is the node's start time, for the uptime."""

    def __init__(self, node: Node, now: float) -> None:
        self.node = node
        self.started = now
        node.register_handler(InfoRequest, self._handle_info)

    def summary(self, now: float) -> dict[str, Any]:
        """The node's summary as a JSON-ready dict.

        Keys: ``id`` (decimal string: JSON numbers lose precision past 2**53), ``address``
        (``host:port`` or null), ``client_only``, ``uptime`` (seconds), ``k``, ``contacts``,
        ``buckets`` (``count``, ``fill``: contacts per bucket in id order, ``replacements``:
        contacts waiting in replacement caches), ``store`` (the store's own counters, e.g.
        ``values``, ``value_bytes``, ``entry_keys``, ``entries``, ``records``) and ``stats``
        (the node's traffic counters).
        """
        node = self.node
        buckets = node.table.buckets
        return {
            "id": str(node.id),
            "address": None if node.address is None else format_address(node.address),
            "client_only": node.client_only,
            "uptime": round(max(0.0, now - self.started), 3),
            "k": node.config.k,
            "contacts": len(node.table),
            "buckets": {
                "count": len(buckets),
                "fill": [len(bucket) for bucket in buckets],
                "replacements": sum(len(bucket.replacements) for bucket in buckets),
            },
            "store": dict(node.store.stats()),
            "stats": dict(sorted(node.stats.items())),
        }

    def document(self, now: float) -> bytes:
        """:meth:`summary` as UTF-8 JSON, within ``Config.max_value_size`` bytes."""
        summary = self.summary(now)
        limit = self.node.config.max_value_size
        data = _dump(summary)
        # At most 257 buckets and a few dozen counters: far below the limit in practice, but a
        # reply must never fail to encode, so shed detail rather than answer nothing.
        for detail in ("stats", "store"):
            if len(data) <= limit:
                break
            summary[detail] = {}
            data = _dump(summary)
        if len(data) > limit:
            summary["buckets"]["fill"] = []
            data = _dump(summary)
        return data

    def query(self, address: Address, now: float) -> Call[dict[str, Any]]:
        """Ask the node at ``address`` for its summary. Fails with OperationTimeout when it does
        not answer, RemoteError when it refuses (it is not on loopback with us; its reason
        shortened and with any character that is not printable replaced), ProtocolError when
        the answer is not a JSON object."""
        node = self.node
        call: Call[dict[str, Any]] = node.new_call("info", now)

        def on_reply(envelope: Envelope | None, now: float) -> None:
            if envelope is None:
                call.fail(OperationTimeout(f"no answer from {format_address(address)}"))
                return
            message = envelope.message
            if isinstance(message, Error):
                call.fail(RemoteError(message.code, printable(message.reason)))
                return
            if not isinstance(message, InfoReply):
                call.fail(ProtocolError(f"INFO answered with {type(message).__name__}"))
                return
            try:
                summary = json.loads(message.document.decode("utf-8"),
                                     parse_constant=_not_json, parse_float=_finite)
            except (UnicodeDecodeError, ValueError, RecursionError):  # nested too deep
                call.fail(ProtocolError("INFO reply is not UTF-8 JSON"))
                return
            if not isinstance(summary, dict):
                call.fail(ProtocolError("INFO reply is not a JSON object"))
                return
            call.resolve(summary)

        node.request(address, InfoRequest(), now, on_reply=on_reply)
        return call

    def _handle_info(self, message: InfoRequest, sender: int | None, address: Address,
                     now: float) -> Message:
        if not is_loopback(address[0]):
            return Error(ErrorCode.UNSUPPORTED, "INFO is answered to loopback addresses only")
        return InfoReply(self.document(now))


def _not_json(constant: str) -> float:
    """Refuses ``NaN``, ``Infinity`` and ``-Infinity``, which JSON does not have."""
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent as a float; ValueError when it is too large
    for one (``1e400`` would be infinity)."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of a float's range")
    return number


def _dump(summary: dict[str, Any]) -> bytes:
    return json.dumps(summary, separators=(",", ":")).encode("utf-8")
