"""The HTTP helper: a :class:`~qadom.peer.Peer` over plain HTTP, served on the peer's own loop.

```python
async with Peer() as peer, HttpHelper(peer, port=8080) as http:
    print(http.address)   # ("127.0.0.1", 8080)
```

It speaks two things (docs/HTTP.md has every route with curl examples; ``GET /openapi.json``
serves the OpenAPI 3 document, built from the same route table as the server):

* ``/dht/{key}``: the signed-record API of an existing Kademlia deployment, so that its clients
  work unchanged (:mod:`qadom.dhtrecords` holds the rules; every holder checks them);
* a REST face for every Peer operation: values, multimap entries, forget, namespaces, publish
  and subscribe (Server-Sent Events), the closest nodes to a key, bootstrap, ping, refresh, node
  info, routing table and stats.

Keys (values' keys, multimap keys and values, node ids, topics) are written one way everywhere:
exactly 64 hexadecimal digits, the 256-bit number big-endian and zero-padded; either case is
accepted, lowercase is written. Binary data inside JSON is base64 (RFC 4648, with padding); raw
values travel as ``application/octet-stream`` bodies.

Guarantees: every answer is JSON except the raw value of ``GET /values/{key}``, the event stream of
``GET /subscribe/{key}`` and the plain-text 400 aiohttp's parser gives a request that is not valid
HTTP (see below); an error is ``{"error": reason, "field": name}`` (``field`` when one input is at
fault) with a status that says why: 400 bad input, 401 a signature or ownership refusal, 404 nothing
found, 405 a method the path does not have, 408 a body that did not arrive within
``http_body_timeout``, 409 a stale namespace sequence, 413 too large, 429 rate limited, 502/503/504
the network or the peer could not answer. Every GET route answers HEAD too. Bodies may come with
Content-Encoding gzip or deflate (decoded here, the limits applying to the decoded body); another
coding is a 400, so is a Transfer-Encoding other than chunked, a JSON object that repeats a member
name, and an ``Expect`` other than ``100-continue`` (whose body is refused with a 413 before it is
sent when it announces too many bytes). Every limit is in :class:`~qadom.config.Config`.

A request aiohttp's parser refuses (a bad request line, a URL or header over 8190 bytes, a bad
Content-Length or chunk) is answered by aiohttp itself before any application code runs: a
plain-text 400 that no middleware or signal can change. The helper only keeps its traceback out of
the log (one DEBUG line on ``qadom.http.server`` instead, on one line and printable).

Logging: the helper writes no access log (aiohttp's writes header text each client chose, such as
its User-Agent, unescaped). A request that fails for the network (a 5xx) is one INFO line on
``qadom.http``; whatever of the client's request it quotes (method, path) is printable, on that
line (:func:`~qadom.errors.printable`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import json
import logging
import re
import secrets
import time
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.http import HttpProcessingError, HttpVersion11

from . import __version__
from .config import Config
from .contact import Address, Contact, check_bind_host, is_ip_literal
from .dhtrecords import (
    SECURED,
    node_signing_key,
    parse_write,
    public_key,
    sign,
)
from .errors import (
    BadSignature,
    InvalidField,
    InvalidType,
    NoPeersError,
    NotFoundError,
    OperationTimeout,
    PeerClosedError,
    QadomError,
    RateLimited,
    RemoteError,
    ServiceUnavailable,
    SlowRequest,
    StaleSequence,
    StorageFull,
    TooManySubscribers,
    Unauthorized,
    UsageError,
    ValueTooLarge,
    WrongLoopError,
    printable,
)
from .peer import Peer, check_port
from .subscription import Subscription
from .transport import run_in_loop

log = logging.getLogger("qadom.http")

_KEY = re.compile(r"[0-9a-fA-F]{64}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


# ============================================================================ state


@dataclass
class HelperState:
    """What the handlers share: the peer's config, this node's signing key, open streams."""

    config: Config
    secret: bytes
    public_key: bytes
    subscriptions: int = 0
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    # The connections of the event streams being written (see _on_shutdown).
    streams: set[asyncio.Transport] = field(default_factory=set)


PEER = web.AppKey("peer", Peer)
STATE = web.AppKey("state", HelperState)


# ============================================================================ textual forms


def key_text(value: int) -> str:
    """The textual form of a key: 64 lowercase hex digits."""
    return f"{value:064x}"


def parse_key(text: object, name: str = "key") -> int:
    """A key from its textual form (64 hex digits); InvalidField naming ``name`` otherwise."""
    if not isinstance(text, str) or _KEY.fullmatch(text) is None:
        raise InvalidField(name, "must be 64 hexadecimal digits")
    return int(text, 16)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object, name: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidField(name, "must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidField(name, "is not valid base64") from None


def _unhex(text: object, name: str) -> bytes:
    if not isinstance(text, str) or _HEX.fullmatch(text) is None:
        raise InvalidField(name, "must be a string of hex digits, two per byte")
    return bytes.fromhex(text)


def _sized_hex(text: object, name: str, size: int) -> bytes:
    raw = _unhex(text, name)
    if len(raw) != size:
        raise InvalidField(name, f"must be {size} bytes ({2 * size} hex digits)")
    return raw


_BAD_ESCAPE = re.compile(r"%(?![0-9a-fA-F]{2})")


def _dht_key(request: web.Request) -> str:
    """The text key of a ``/dht/{key}`` route: its path segment percent-decoded as UTF-8.
    InvalidField("key") when the segment is not that (a ``%`` not followed by two hex digits,
    escapes of bytes that are not UTF-8): aiohttp would keep such a segment as it is, so
    ``/dht/%FF`` would name the key that ``/dht/%25FF`` names."""
    segment = request.rel_url.raw_parts[2]  # "/", "dht", the key: the routes match one segment
    if _BAD_ESCAPE.search(segment) is None:
        with contextlib.suppress(UnicodeDecodeError):
            return urllib.parse.unquote_to_bytes(segment).decode()
    raise InvalidField("key", "must be percent-encoded UTF-8 text (a % is written %25)")


def _contact_json(contact: Contact) -> dict[str, Any]:
    return {"id": key_text(contact.id), "host": contact.address[0], "port": contact.address[1]}


def _address(item: object, name: str, family: int) -> Address:
    """A ``{"host": IP literal, "port": 1-65535}`` object whose host is of IP version ``family``
    (4 or 6: that of this node's socket, which cannot reach the other). Host names are refused:
    resolving them would let any HTTP client make this node query DNS. InvalidField naming
    ``name.host`` or ``name.port`` otherwise (``host`` or ``port`` when ``name`` is "": the
    request body itself, whose fields are named undotted)."""
    if not isinstance(item, dict):
        raise InvalidField(name or "body", "must be an object with host and port")
    where = f"{name}." if name else ""
    host, port = item.get("host"), item.get("port")
    if not isinstance(host, str):
        raise InvalidField(f"{where}host", "must be an IP address")
    if not is_ip_literal(host):  # the codec's rule: an IPv6 zone must name an interface
        raise InvalidField(f"{where}host", "must be an IP address")
    version = ipaddress.ip_address(host).version
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise InvalidField(f"{where}port", "must be an integer in [1, 65535]")
    if version != family:
        raise InvalidField(f"{where}host", f"is an IPv{version} address, and this node's socket "
                           f"is IPv{family}: it cannot reach it")
    return host, port


def _family(peer: Peer) -> int:
    """The IP version (4 or 6) of the peer's bound socket."""
    return ipaddress.ip_address(peer.address[0]).version


# ============================================================================ bodies


# Content codings the helper decodes itself (aiohttp's own decoding is off, see make_app): the
# zlib window bits of each; deflate's are chosen from the data (zlib-wrapped, or raw as some
# clients send it).
_GZIP = 16 + zlib.MAX_WBITS
_CODINGS: dict[str, int | None] = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": None}
_MAX_CODINGS = 2


def _codings(request: web.Request, name: str) -> list[str]:
    """The codings the request's ``name`` headers list, lowercase, in order, ``identity`` (no
    coding) and empty items dropped."""
    codings = (item.strip().lower() for header in request.headers.getall(name, ())
               for item in header.split(","))
    return [c for c in codings if c and c != "identity"]


def _content_codings(request: web.Request) -> list[str]:
    """The codings of the request's Content-Encoding, in the order they were applied
    (``identity`` dropped). InvalidField("Content-Encoding"), a 400, for one this helper does not
    decode (br, zstd, compress...) or for more than ``_MAX_CODINGS`` of them."""
    codings = _codings(request, "Content-Encoding")
    for coding in codings:
        if coding not in _CODINGS:
            raise InvalidField("Content-Encoding", f"{coding!r} is not supported; send the body "
                               "as is, or with gzip or deflate")
    if len(codings) > _MAX_CODINGS:
        raise InvalidField("Content-Encoding", f"at most {_MAX_CODINGS} codings")
    return codings


def _check_transfer_codings(request: web.Request) -> None:
    """InvalidField("Transfer-Encoding"), a 400, for a transfer coding other than ``chunked``
    (``identity`` dropped). aiohttp reads the chunks and leaves a coding applied before them
    (``gzip, chunked``) as it was: the body would be taken, and stored, still coded."""
    for coding in _codings(request, "Transfer-Encoding"):
        if coding != "chunked":
            raise InvalidField("Transfer-Encoding", f"{coding!r} is not supported; send the "
                               "body chunked or with a Content-Length, and name a gzip or "
                               "deflate coding in Content-Encoding")


def _deflate_bits(raw: bytes) -> int:
    """zlib's window bits for a deflate body: the zlib format when ``raw`` opens with a zlib
    header (RFC 1950), raw deflate otherwise."""
    zlib_header = len(raw) >= 2 and raw[0] & 0x0F == 8 and int.from_bytes(raw[:2], "big") % 31 == 0
    return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS


def _decode(raw: bytes, coding: str, limit: int) -> bytes:
    """``raw`` decoded from ``coding`` (a key of ``_CODINGS``; gzip may hold several members).

    Guarantees: at most ``limit + 1`` bytes are ever inflated, so a compression bomb costs no
    more than a body at the limit; ValueTooLarge (413) when the decoded body exceeds ``limit``;
    InvalidField("body") (400) when ``raw`` is not complete data of that coding. An empty body
    stays empty."""
    bits = _CODINGS[coding]
    out = bytearray()
    data = raw
    while data:
        inflater = zlib.decompressobj(_deflate_bits(data) if bits is None else bits)
        try:
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise InvalidField("body", f"is not valid {coding} data ({exc})") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise ValueTooLarge(f"the decoded body exceeds the {limit}-byte limit")
        if not inflater.eof:
            raise InvalidField("body", f"is truncated {coding} data")
        data = inflater.unused_data
        if data and bits is None:
            raise InvalidField("body", "has bytes after the end of its deflate data")
    return bytes(out)


async def _body(request: web.Request) -> bytes:
    """The request body, decoded from its Content-Encoding (gzip, deflate, identity).

    Guarantees: raises only QadomErrors: ValueTooLarge (413) when the body, as sent or decoded,
    exceeds ``http_max_body_size``; InvalidField (400) naming "Content-Encoding" for a coding
    this helper does not decode, "Transfer-Encoding" for a transfer coding other than chunked,
    or "body" for data that does not decode or could not be read (a bad chunked encoding)."""
    limit = request.app[STATE].config.http_max_body_size
    _check_transfer_codings(request)
    codings = _content_codings(request)
    if request.content_length is not None and request.content_length > limit:
        raise ValueTooLarge(f"the body of {request.content_length} bytes exceeds the "
                            f"{limit}-byte limit")
    try:
        async with asyncio.timeout(request.app[STATE].config.http_body_timeout):
            raw = await request.read()
    except TimeoutError:
        raise SlowRequest(f"the body did not arrive within "
                          f"{request.app[STATE].config.http_body_timeout:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise ValueTooLarge(f"the body exceeds the {limit}-byte limit") from None
    except web.RequestPayloadError:
        raise InvalidField("body", "could not be read (a malformed chunked encoding?)") from None
    for coding in reversed(codings):
        raw = _decode(raw, coding, limit)
    return raw


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose member names are all different; InvalidField("body") otherwise. JSON
    leaves a repeated name undefined (RFC 8259, section 4): a proxy or a client library may read
    the first where ``json`` keeps the last, so the request would mean two things."""
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise InvalidField("body", f"has the member {name!r} twice in one object")
        obj[name] = value
    return obj


async def _json(request: web.Request, *, required: bool = True) -> Any:
    """The JSON request body (any Content-Type: curl's -d sends a form type); InvalidField
    ("body") when it is not JSON or repeats a member name in an object. An empty body is ``{}``
    unless ``required``."""
    raw = await _body(request)
    if not raw.strip() and not required:
        return {}
    try:
        return json.loads(raw.decode(), parse_constant=_no_constants,
                          object_pairs_hook=_unique_members)
    except InvalidField:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError covers JSONDecodeError, NaN/Infinity and integers too long to convert;
        # RecursionError deeply nested arrays.
        raise InvalidField("body", "is not valid JSON") from None


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidField("body", "must be a JSON object")
    return body


# ============================================================================ errors


def _status(exc: QadomError) -> int:
    """The HTTP status of a deliberate qadom error (see the module docstring)."""
    table: list[tuple[type[QadomError], int]] = [
        (SlowRequest, 408),
        (Unauthorized, 401),
        (BadSignature, 401),
        (ValueTooLarge, 413),
        (PeerClosedError, 503),
        (UsageError, 400),
        (NotFoundError, 404),
        (StaleSequence, 409),
        (RateLimited, 429),
        (TooManySubscribers, 503),
        (ServiceUnavailable, 503),
        (StorageFull, 503),
        (OperationTimeout, 504),
        (NoPeersError, 502),
        (RemoteError, 502),
    ]
    for cls, status in table:
        if isinstance(exc, cls):
            return status
    return 502  # a ProtocolError or another failure of the network, never of the request


def error_response(status: int, message: str, name: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if name is not None:
        body["field"] = name
    return web.json_response(body, status=status, headers=headers)


def _client_fault(exc: BaseException | None) -> bool:
    """Whether ``exc`` is aiohttp's word for a malformed request (a bad request line, an over-long
    URL or header, a bad Content-Length, a broken chunked body): the client's fault, not ours."""
    if isinstance(exc, web.RequestPayloadError):
        return True
    return isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500


_FAULT_TEXT_LIMIT = 400
"""Characters kept of the DEBUG line that stands for a request aiohttp's parser refused: the
parser's message may quote a whole 8190-byte header line, and its start says what was wrong."""


class _ClientFaultsAreNotErrors(logging.Filter):
    """On the helper's server logger: aiohttp logs a request its parser refused (and answered
    with a 400) with a traceback, as an ERROR (or as a DEBUG record, for a bad method in a
    connection's first request line). Such a record becomes one DEBUG line without traceback,
    its text on that one line (runs of white space, the parser's newlines among them, made one
    space) and printable (see :func:`~qadom.errors.printable`): the parser's message quotes the
    client's bytes. Every other record, a real failure included, passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not _client_fault(exc):
            return True
        reason = getattr(exc, "message", None) or exc
        text = " ".join(f"{record.getMessage()}: {type(exc).__name__}: {reason}".split())
        _SERVER_LOG.debug("%s", printable(text, _FAULT_TEXT_LIMIT))
        return False


# aiohttp's protocol logs here (make_app passes it as ``logger``), so the filter touches no other
# aiohttp server in the process.
_SERVER_LOG = logging.getLogger("qadom.http.server")
_SERVER_LOG.addFilter(_ClientFaultsAreNotErrors())


@web.middleware
async def _errors_as_json(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                          ) -> web.StreamResponse:
    """Deliberate errors (qadom's own, and aiohttp's 4xx such as 404/405) become JSON answers.
    Nothing else is caught: an unexpected exception is a bug, and the tests look for it."""
    try:
        return await handler(request)
    except QadomError as exc:
        name = exc.field if isinstance(exc, InvalidField) else None
        status = _status(exc)
        if status >= 500:
            # The path is the client's, percent-decoded: a newline or an ESC in it would forge
            # a line of the operator's log or drive the terminal.
            log.info("%s %s: %s", printable(request.method), printable(request.path),
                     printable(str(exc), None))
        response = error_response(status, str(exc), name)
        if status == 408:
            response.force_close()  # the rest of the body may still come: no next request
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, exc.reason, headers=allow)


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """The ``Expect`` header of a request to a route, answered before its handler runs (so no
    middleware sees what this returns): ``100-continue`` gets the interim ``100 Continue``
    unless the announced body is over ``http_max_body_size`` (a JSON 413 then, and the client
    never sends it); any other expectation is a JSON 400 naming ``Expect`` (aiohttp's own
    handler would answer a plain-text 417). HTTP/1.0 has no expectations: ignored."""
    expect = request.headers.get("Expect", "").strip()
    if request.version != HttpVersion11:
        return None
    if expect.lower() != "100-continue":
        return error_response(400, f"Expect: {expect!r} is not supported (only 100-continue)",
                              "Expect")
    limit = request.app[STATE].config.http_max_body_size
    if request.content_length is not None and request.content_length > limit:
        response = error_response(413, f"the body of {request.content_length} bytes exceeds "
                                  f"the {limit}-byte limit")
        response.force_close()  # the body will not come: this connection cannot go on
        return response
    try:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    except ConnectionResetError:
        # The client hung up before the interim answer (aiohttp's ClientConnectionResetError
        # is one): its fault, not ours, and nobody is left to answer. Ended here as any other
        # hang-up, with no error logged for it.
        raise asyncio.CancelledError from None
    request.writer.output_size = 0  # as aiohttp's handler does: the answer is yet to come
    return None


# ============================================================================ handlers


def _peer(request: web.Request) -> Peer:
    return request.app[PEER]


async def dht_post(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    key = _dht_key(request)
    write = parse_write(key, await _json(request), state.config)
    result = await _peer(request).run_service(
        lambda node, now: node.dht_records.put(write, now))
    return web.json_response({"key": key, "stored": result.stored})


async def dht_get(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    key = _dht_key(request)
    record = await _peer(request).run_service(lambda node, now: node.dht_records.get(key, now))
    data = record.to_json_text()
    signature = sign(state.secret, key, data, None, SECURED)
    return web.json_response({
        "data": data, "persist_mode": SECURED,
        "authorization": {"pub_key": {"key": state.public_key.hex(), "exp_time": None},
                          "sign": signature.hex()}})


async def dht_forget_post(request: web.Request) -> web.StreamResponse:
    """Stop republishing a /dht record this node wrote (it then expires everywhere);
    ``forgotten`` is false when it was not ours."""
    key = _dht_key(request)
    return web.json_response({"key": key, "forgotten": _peer(request).dht_forget(key)})


async def value_post(request: web.Request) -> web.StreamResponse:
    key = await _peer(request).set(await _body(request))
    return web.json_response({"key": key_text(key)})


async def value_get(request: web.Request) -> web.StreamResponse:
    key = parse_key(request.match_info["key"])
    value = await _peer(request).get(key)
    return web.Response(body=value, content_type="application/octet-stream")


async def forget_post(request: web.Request) -> web.StreamResponse:
    """Stop republishing a value or multimap entries this node published (they then expire
    everywhere); ``forgotten`` is false when the key was not ours."""
    key = parse_key(request.match_info["key"])
    return web.json_response({"key": key_text(key), "forgotten": _peer(request).forget(key)})


async def entries_post(request: web.Request) -> web.StreamResponse:
    key = parse_key(request.match_info["key"])
    value = parse_key(_object(await _json(request)).get("value"), "value")
    await _peer(request).append(key, value)
    return web.json_response({"key": key_text(key), "value": key_text(value)})


async def entries_get(request: web.Request) -> web.StreamResponse:
    key = parse_key(request.match_info["key"])
    values = await _peer(request).search(key)
    return web.json_response({"key": key_text(key),
                              "values": [key_text(v) for v in sorted(values)]})


async def closest_get(request: web.Request) -> web.StreamResponse:
    """The (at most) k closest nodes that answered a lookup of the key, closest first
    (:meth:`Peer.find_nodes`); never this node, even when it is the closest."""
    target = parse_key(request.match_info["key"])
    contacts = await _peer(request).find_nodes(target)
    return web.json_response({"target": key_text(target),
                              "contacts": [_contact_json(c) for c in contacts]})


async def namespace_put(request: web.Request) -> web.StreamResponse:
    public = _sized_hex(request.match_info["public_key"], "public_key", 32)
    key = parse_key(request.match_info["key"])
    body = _object(await _json(request))
    value = _unb64(body.get("value"), "value")
    signature = _sized_hex(body.get("signature"), "signature", 64)
    seq = body.get("seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
        raise InvalidField("seq", "must be an integer in [0, 2**63)")
    stored = await _peer(request).namespace_set(public, signature, key, value, seq=seq)
    return web.json_response({"public_key": public.hex(), "key": key_text(key), "seq": seq,
                              "stored": stored})


async def namespace_forget_post(request: web.Request) -> web.StreamResponse:
    """Stop republishing a namespace record this node wrote (it then expires everywhere);
    ``forgotten`` is false when it was not ours."""
    public = _sized_hex(request.match_info["public_key"], "public_key", 32)
    key = parse_key(request.match_info["key"])
    forgotten = _peer(request).namespace_forget(public, key)
    return web.json_response({"public_key": public.hex(), "key": key_text(key),
                              "forgotten": forgotten})


async def namespace_get(request: web.Request) -> web.StreamResponse:
    public = _sized_hex(request.match_info["public_key"], "public_key", 32)
    key = parse_key(request.match_info["key"])
    record = await _peer(request).namespace_get_record(public, key)
    return web.json_response({"public_key": public.hex(), "key": key_text(key),
                              "value": _b64(record.value), "seq": record.seq,
                              "signature": record.signature.hex()})


async def publish_post(request: web.Request) -> web.StreamResponse:
    topic = parse_key(request.match_info["key"])
    relays = await _peer(request).publish(topic, await _body(request))
    return web.json_response({"key": key_text(topic), "relays": relays})


async def subscribe_get(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: one ``message`` event per published value (data: base64), a comment
    line first once the subscription is active, and one every ``http_sse_keepalive`` seconds.
    A client that fell behind is told so before the next message: a ``dropped`` event (see
    :func:`_stream`).

    HEAD registers the subscription as GET does, so that it answers GET's status and headers,
    then unsubscribes at once (no stream)."""
    state = request.app[STATE]
    topic = parse_key(request.match_info["key"])
    if state.subscriptions >= state.config.http_max_subscriptions:
        raise ServiceUnavailable(
            f"{state.config.http_max_subscriptions} event streams are open; try later")
    if state.closing.is_set():
        raise ServiceUnavailable("the helper is shutting down")
    state.subscriptions += 1
    try:
        async with _peer(request).subscribe(topic) as messages:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                   "Cache-Control": "no-cache"})
            await response.prepare(request)
            if request.method == "HEAD":
                return response
            transport = request.transport
            if transport is not None:
                state.streams.add(transport)
            try:
                await _send(response, b": subscribed\n\n", state, transport)
                await _stream(response, messages, state, transport)
            except (ConnectionError, QadomError):
                # The client went away, or the peer closed: the stream just ends (its status and
                # headers are sent already, so there is no error answer to give).
                pass
            finally:
                if transport is not None:
                    state.streams.discard(transport)
            return response
    finally:
        state.subscriptions -= 1


async def _send(response: web.StreamResponse, data: bytes, state: HelperState,
                transport: asyncio.Transport | None) -> None:
    """Write ``data`` to an event stream. ConnectionResetError, the connection cut, when the
    write waited ``Config.http_sse_write_timeout`` for its client to read: a client that reads
    nothing would otherwise hold its stream, one of a few, for as long as it stays connected."""
    try:
        async with asyncio.timeout(state.config.http_sse_write_timeout):
            await response.write(data)
    except TimeoutError:
        if transport is not None:
            transport.abort()
        raise ConnectionResetError("the client read nothing for "
                                   f"{state.config.http_sse_write_timeout:g} s") from None


async def _stream(response: web.StreamResponse, messages: Subscription,
                  state: HelperState, transport: asyncio.Transport | None) -> None:
    """Write ``messages`` as events until the subscription ends or the helper closes.

    A client that reads more slowly than messages come makes the writes wait, and the
    subscription drops the newest past its bounds (``Config.pubsub_queue_size`` messages,
    ``Config.pubsub_queue_bytes`` bytes). Before the next message the client is told how many
    it lost since it was last told: ``event: dropped`` with the count as data and no ``id``, so
    that the ids go on numbering the messages sent (an EventSource keeps its ``lastEventId``,
    and ``onmessage`` sees no other event type). A subscription drops only while messages
    wait (any one message fits its bounds), so a message always follows a drop and no count is
    left untold on an idle stream."""
    iterator = aiter(messages)
    told = 0  # messages.dropped as last written
    closing: asyncio.Future[Any] = asyncio.ensure_future(state.closing.wait())
    pending: asyncio.Future[bytes] | None = None
    count = 0
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            # One pending read survives keepalive ticks: cancelling a read could end the stream.
            waiters: set[asyncio.Future[Any]] = {pending, closing}
            done, _ = await asyncio.wait(waiters,
                                         timeout=state.config.http_sse_keepalive,
                                         return_when=asyncio.FIRST_COMPLETED)
            if closing in done:
                return
            if pending not in done:
                await _send(response, b": keepalive\n\n", state, transport)
                continue
            task, pending = pending, None
            try:
                value = task.result()
            except StopAsyncIteration:
                return
            if messages.dropped > told:
                lost, told = messages.dropped - told, messages.dropped
                await _send(response, f"event: dropped\ndata: {lost}\n\n".encode(), state,
                            transport)
            count += 1
            await _send(response, f"id: {count}\nevent: message\ndata: {_b64(value)}\n\n".encode(),
                        state, transport)
    finally:
        closing.cancel()
        if pending is not None:
            pending.cancel()


async def bootstrap_post(request: web.Request) -> web.StreamResponse:
    """Join through ``addresses``; without them, rejoin through the contacts the node's store
    saved (a node restarted on its data directory)."""
    body = _object(await _json(request, required=False))
    items = body.get("addresses")
    if items is None:
        size = await _peer(request).bootstrap()
        return web.json_response({"contacts": size})
    if not isinstance(items, list) or not items:
        raise InvalidField("addresses", "must be a non-empty array of {host, port}")
    limit = request.app[STATE].config.http_max_bootstrap_addresses
    if len(items) > limit:
        raise InvalidField("addresses", f"at most {limit} addresses")
    peer = _peer(request)
    addresses = [_address(item, f"addresses[{i}]", _family(peer))
                 for i, item in enumerate(items)]
    size = await peer.bootstrap(addresses)
    return web.json_response({"contacts": size})


async def ping_post(request: web.Request) -> web.StreamResponse:
    peer = _peer(request)
    address = _address(_object(await _json(request)), "", _family(peer))
    contact = await peer.ping(address)
    return web.json_response(_contact_json(contact))


async def refresh_post(request: web.Request) -> web.StreamResponse:
    body = _object(await _json(request, required=False))
    all_buckets = body.get("all_buckets", False)
    if not isinstance(all_buckets, bool):
        raise InvalidField("all_buckets", "must be a boolean")
    peer = _peer(request)
    await peer.refresh(all_buckets=all_buckets)
    return web.json_response({"contacts": len(peer.routing_table)})


async def node_get(request: web.Request) -> web.StreamResponse:
    peer, state = _peer(request), request.app[STATE]
    host, port = peer.address
    return web.json_response({
        "id": key_text(peer.id), "host": host, "port": port, "version": __version__,
        "contacts": len(peer.routing_table), "public_key": state.public_key.hex(),
        "running": peer.running})


async def routing_table_get(request: web.Request) -> web.StreamResponse:
    table = _peer(request).routing_table
    buckets = [{"lo": key_text(b.lo), "depth": b.depth,
                "contacts": [_contact_json(c) for c in b.contacts.values()],
                "replacements": len(b.replacements)} for b in table.buckets]
    return web.json_response({"id": key_text(table.own_id), "size": len(table),
                              "buckets": buckets})


async def stats_get(request: web.Request) -> web.StreamResponse:
    node = _peer(request).node
    return web.json_response({"node": {k: int(v) for k, v in sorted(node.stats.items())},
                              "store": {k: int(v) for k, v in sorted(node.store.stats().items())}})


async def openapi_get(request: web.Request) -> web.StreamResponse:
    return web.json_response(openapi_document(request.app[STATE].config))


# ============================================================================ the route table
# One table drives both the router and /openapi.json, so the document lists every route.

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    params: tuple[str, ...] = ()
    body: dict[str, Any] | None = None
    ok: dict[str, Any] | None = None
    errors: tuple[int, ...] = ()


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_OCTETS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_NET = (502, 503, 504)  # the network or the peer could not answer
_EXPECT_ERRORS = (400, 413)  # what _expect answers on any route, before its handler runs
_STREAM_TEXT = (
    "A comment ': subscribed' once the subscription is registered, then one event 'message' per "
    "message (data: base64; id: 1, 2, ... counting the messages sent) and a comment "
    "': keepalive' on an idle stream. A client that reads more slowly than messages come loses "
    "the newest past the subscription's bounds; before the next message an event 'dropped' "
    "(no id) gives as data how many it lost since the last such event.")

ROUTES: tuple[Route, ...] = (
    Route("POST", "/dht/{key}", dht_post, "Write a signed record (SECURED or CONTROLLED)",
          ("dht_key",), _json_content(_ref("DhtWrite")),
          _json_content(_ref("DhtWriteResult")), (400, 401, 413, 429, *_NET)),
    Route("GET", "/dht/{key}", dht_get,
          "Read a record, signed by this node's secp256k1 key", ("dht_key",), None,
          _json_content(_ref("DhtWrite")), (400, 404, *_NET)),
    Route("POST", "/dht/{key}/forget", dht_forget_post,
          "Stop republishing a record this node wrote", ("dht_key",), None,
          _json_content(_ref("DhtForgotten")), (400, 503)),
    Route("POST", "/values", value_post, "Store a value (raw bytes); answers its key", (),
          _OCTETS, _json_content(_ref("KeyResult")), (400, 413, 429, *_NET)),
    Route("GET", "/values/{key}", value_get, "The value (raw bytes) stored under a key",
          ("key",), None, _OCTETS, (400, 404, *_NET)),
    Route("POST", "/forget/{key}", forget_post,
          "Stop republishing a value or entries this node published", ("key",), None,
          _json_content(_ref("Forgotten")), (400, 503)),
    Route("POST", "/entries/{key}", entries_post, "Add a value to the multimap set of a key",
          ("key",), _json_content(_ref("EntryWrite")), _json_content(_ref("EntryResult")),
          (400, 413, 429, *_NET)),
    Route("GET", "/entries/{key}", entries_get, "Every value of the multimap set of a key",
          ("key",), None, _json_content(_ref("Entries")), (400, *_NET)),
    Route("PUT", "/namespaces/{public_key}/{key}", namespace_put,
          "Write a signed namespace record", ("public_key", "key"),
          _json_content(_ref("NamespaceWrite")), _json_content(_ref("NamespaceResult")),
          (400, 401, 409, 413, 429, *_NET)),
    Route("GET", "/namespaces/{public_key}/{key}", namespace_get,
          "Read a namespace record (value, seq and signature)", ("public_key", "key"), None,
          _json_content(_ref("NamespaceRecord")), (400, 404, *_NET)),
    Route("POST", "/namespaces/{public_key}/{key}/forget", namespace_forget_post,
          "Stop republishing a namespace record this node wrote", ("public_key", "key"), None,
          _json_content(_ref("NamespaceForgotten")), (400, 503)),
    Route("POST", "/publish/{key}", publish_post,
          "Publish a message (raw bytes) to a topic; answers how many relays accepted it",
          ("key",), _OCTETS, _json_content(_ref("PublishResult")), (400, 413, 429, *_NET)),
    Route("GET", "/subscribe/{key}", subscribe_get,
          "Subscribe to a topic as Server-Sent Events (event 'message', data base64; event "
          "'dropped', data the count of messages lost by falling behind)", ("key",), None,
          {"text/event-stream": {"schema": {"type": "string", "description": _STREAM_TEXT}}},
          (400, 429, *_NET)),
    Route("GET", "/closest/{key}", closest_get,
          "The k closest nodes to a key that answered a lookup (never this node)", ("key",), None,
          _json_content(_ref("Closest")), (400, *_NET)),
    Route("POST", "/bootstrap", bootstrap_post,
          "Join the network through known addresses (none: through the contacts the store "
          "saved at the last join or maintenance)", (),
          _json_content(_ref("Bootstrap")), _json_content(_ref("ContactCount")),
          (400, 413, *_NET)),
    Route("POST", "/ping", ping_post, "Ping an address; answers the node found there", (),
          _json_content(_ref("Address")), _json_content(_ref("Contact")), (400, 413, *_NET)),
    Route("POST", "/refresh", refresh_post, "Refresh stale buckets (all with all_buckets)", (),
          _json_content(_ref("Refresh")), _json_content(_ref("ContactCount")),
          (400, 413, *_NET)),
    Route("GET", "/node", node_get, "This node: id, address, version, signing key", (), None,
          _json_content(_ref("NodeInfo"))),
    Route("GET", "/routing-table", routing_table_get, "The k-buckets and their contacts", (),
          None, _json_content(_ref("RoutingTable"))),
    Route("GET", "/stats", stats_get, "Counters of the node and of its store", (), None,
          _json_content(_ref("Stats"))),
    Route("GET", "/openapi.json", openapi_get, "This document", (), None,
          _json_content({"type": "object"}), ()),
)

_KEY_SCHEMA = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$",
               "description": "64 hexadecimal digits: a 256-bit key, big-endian"}
_HEX_SCHEMA = {"type": "string", "pattern": "^([0-9a-fA-F]{2})*$"}
_SIG_SCHEMA = {"type": "string", "pattern": "^[0-9a-fA-F]{128}$",
               "description": "ed25519 signature (64 bytes), hex"}
_ERROR_TEXT = {
    400: "Bad input; 'field' names it", 401: "A signature or ownership rule refused the write",
    404: "Nothing found",
    408: "The body did not arrive within the helper's time for it (the connection is closed)",
    409: "A newer or conflicting record is held (stale seq)",
    413: ("The body or the record is too large (or the body an 'Expect: 100-continue' "
          "announced)"),
    429: "Rate limited by the network",
    502: "The network refused or answered wrongly",
    503: ("The peer is closed or closing, the helper is at its stream limit, the storage is "
          "full, or every relay of the topic is full"),
    504: "The network did not answer in time",
}
# Answers to requests outside the operations listed (OpenAPI lists no operation for them).
_RESPONSES: dict[str, Any] = {
    "MethodNotAllowed": {
        "description": "405: the path exists, the method does not (any method not listed for it; "
                       "HEAD is allowed wherever GET is)",
        "headers": {"Allow": {"description": "The methods of this path", "schema":
                              {"type": "string"}}},
        "content": _json_content(_ref("Error"))},
    "NotFound": {"description": "404: no such path", "content": _json_content(_ref("Error"))},
}
_PARAMS: dict[str, dict[str, Any]] = {
    "key": {"name": "key", "in": "path", "required": True, "schema": _KEY_SCHEMA},
    "dht_key": {"name": "key", "in": "path", "required": True,
                "schema": {"type": "string", "minLength": 1},
                "example": "users/alice",
                "description": "Any non-empty text of at most dht_max_key_size UTF-8 bytes, sent "
                               "as one percent-encoded path segment and decoded: '/' is written "
                               "%2F, '%' is written %25, and the keys '.' and '..' must be "
                               "written %2E and %2E%2E (URL normalisation would remove them "
                               "otherwise); a segment that is not percent-encoded UTF-8 is a "
                               "400"},
    "public_key": {"name": "public_key", "in": "path", "required": True, "schema": _KEY_SCHEMA,
                   "description": "The namespace owner's ed25519 public key (32 bytes), hex"},
}


def _schemas(config: Config) -> dict[str, Any]:
    def obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
        names = list(props) if required is None else required
        schema: dict[str, Any] = {"type": "object", "properties": props}
        if names:  # OpenAPI 3.0 refuses an empty "required"
            schema["required"] = names
        return schema

    contact = obj({"id": _KEY_SCHEMA, "host": {"type": "string"},
                   "port": {"type": "integer", "minimum": 1, "maximum": 65535}})
    address = obj({"host": {"type": "string", "description": "an IP address"},
                   "port": {"type": "integer", "minimum": 1, "maximum": 65535}})
    exp_time = {"type": "number", "nullable": True,
                "description": "Unix seconds after which the entry is no longer served"}
    counters = {"type": "object", "additionalProperties": {"type": "integer"}}
    seq = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
    return {
        "Error": obj({"error": {"type": "string"}, "field": {"type": "string"}}, ["error"]),
        "DhtWrite": obj({
            "data": {"type": "string", "minLength": 1},
            "persist_mode": {"type": "string", "enum": ["SECURED", "CONTROLLED"]},
            "authorization": obj({
                "pub_key": obj({"key": {**_HEX_SCHEMA, "description":
                                        "secp256k1 public key, SEC1 hex (compressed or not)"},
                                "exp_time": exp_time}, ["key"]),
                "sign": {**_HEX_SCHEMA, "description": "64-byte compact ECDSA signature r||s"},
            })}),
        "DhtWriteResult": obj({"key": {"type": "string"},
                               "stored": {"type": "integer", "minimum": 0}}),
        "KeyResult": obj({"key": _KEY_SCHEMA}),
        "EntryWrite": obj({"value": _KEY_SCHEMA}),
        "EntryResult": obj({"key": _KEY_SCHEMA, "value": _KEY_SCHEMA}),
        "Entries": obj({"key": _KEY_SCHEMA, "values": {"type": "array", "items": _KEY_SCHEMA}}),
        "NamespaceWrite": obj({"value": {"type": "string", "format": "byte",
                                         "description": "base64, at most 8192 bytes decoded"},
                               "signature": _SIG_SCHEMA, "seq": seq},
                              ["value", "signature"]),
        "NamespaceResult": obj({"public_key": _KEY_SCHEMA, "key": _KEY_SCHEMA, "seq": seq,
                                "stored": {"type": "integer", "minimum": 0}}),
        "NamespaceRecord": obj({"public_key": _KEY_SCHEMA, "key": _KEY_SCHEMA,
                                "value": {"type": "string", "format": "byte"}, "seq": seq,
                                "signature": _SIG_SCHEMA}),
        "PublishResult": obj({"key": _KEY_SCHEMA,
                              "relays": {"type": "integer", "minimum": 1}}),
        "Contact": contact,
        "Address": address,
        "Closest": obj({"target": _KEY_SCHEMA, "contacts": {"type": "array", "items": contact}}),
        "Bootstrap": obj({"addresses": {"type": "array", "items": address, "minItems": 1,
                                        "maxItems": config.http_max_bootstrap_addresses}},
                          []),
        "Forgotten": obj({"key": _KEY_SCHEMA, "forgotten": {"type": "boolean"}}),
        "DhtForgotten": obj({"key": {"type": "string"}, "forgotten": {"type": "boolean"}}),
        "NamespaceForgotten": obj({"public_key": _KEY_SCHEMA, "key": _KEY_SCHEMA,
                                   "forgotten": {"type": "boolean"}}),
        "Refresh": obj({"all_buckets": {"type": "boolean"}}, []),
        "ContactCount": obj({"contacts": {"type": "integer", "minimum": 0}}),
        "NodeInfo": obj({"id": _KEY_SCHEMA, "host": {"type": "string"},
                         "port": {"type": "integer"}, "version": {"type": "string"},
                         "contacts": {"type": "integer", "minimum": 0},
                         "public_key": {**_HEX_SCHEMA, "description":
                                        "this node's secp256k1 key, which signs GET /dht"},
                         "running": {"type": "boolean"}}),
        "RoutingTable": obj({"id": _KEY_SCHEMA, "size": {"type": "integer", "minimum": 0},
                             "buckets": {"type": "array", "items": obj({
                                 "lo": _KEY_SCHEMA, "depth": {"type": "integer"},
                                 "contacts": {"type": "array", "items": contact},
                                 "replacements": {"type": "integer", "minimum": 0}})}}),
        "Stats": obj({"node": counters, "store": counters}),
    }


def openapi_document(config: Config | None = None) -> dict[str, Any]:
    """The OpenAPI 3 document of every route in :data:`ROUTES`, with the limits of ``config``
    (the defaults without one)."""
    config = config or Config()
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        responses: dict[str, Any] = {"200": {"description": "OK", "content": route.ok or {}}}
        # Any route answers an Expect header it cannot meet (_expect) with a 400 or a 413, and
        # one that reads a body answers 408 when it does not come in time (_body).
        slow = (408,) if route.body is not None else ()
        for status in sorted({*route.errors, *_EXPECT_ERRORS, *slow}):
            responses[str(status)] = {"description": _ERROR_TEXT[status],
                                      "content": _json_content(_ref("Error"))}
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.handler.__name__}",
            "responses": responses,
        }
        if route.params:
            operation["parameters"] = [_PARAMS[p] for p in route.params]
        if route.body is not None:
            # POST /refresh and /bootstrap may come without a body (curl -X POST ...).
            operation["requestBody"] = {"required": route.path not in ("/refresh", "/bootstrap"),
                                        "content": route.body}
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "qadom HTTP helper", "version": __version__,
                 "description": "A qadom peer over HTTP. Keys are 64 hex digits; binary data in "
                                "JSON is base64. Every GET route also answers HEAD (the same "
                                "status and headers, no body). A method not listed for a path "
                                "answers 405 (components/responses/MethodNotAllowed), a path not "
                                "listed 404, both with an Error body. docs/HTTP.md in qadom's "
                                "source distribution has every route with curl examples."},
        "paths": paths,
        "components": {"schemas": _schemas(config), "responses": _RESPONSES},
    }


# ============================================================================ the app


async def _on_shutdown(app: web.Application) -> None:
    state = app[STATE]
    state.closing.set()  # ends every event stream, so shutdown never waits on one
    # A stream whose client stopped reading waits in a write for room in its connection (its
    # buffer past the low-water mark: writing paused), and would see that only once the write
    # ends: its connection is cut instead, at once (a graceful end would wait for room again,
    # once per shutdown timeout). A client still keeping up gets a graceful end.
    for transport in list(state.streams):
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[0]:
            transport.abort()


def make_app(peer: Peer) -> web.Application:
    """The aiohttp application serving ``peer``: for :class:`HttpHelper`, or for aiohttp's
    ``TestServer`` in tests. PeerClosedError, before anything is made, unless ``peer`` is
    running (started, and not closed)."""
    if not peer.running:
        raise PeerClosedError("the peer is closed" if peer.closed else
                              "the peer is not running: start it before serving it over HTTP")
    config = peer.config
    secret = node_signing_key(peer.node.store, time.time(), lambda: secrets.token_bytes(32))
    # auto_decompress off: _body decodes Content-Encoding itself, so that a body aiohttp could
    # not decode is a JSON 400 like any bad input (aiohttp would answer it in plain text before
    # any handler runs). The logger filters the tracebacks of requests aiohttp's parser refused.
    app = web.Application(middlewares=[_errors_as_json],
                          client_max_size=config.http_max_body_size,
                          handler_args={"auto_decompress": False, "logger": _SERVER_LOG})
    app[PEER] = peer
    app[STATE] = HelperState(config, secret, public_key(secret))
    for route in ROUTES:
        if route.method == "GET":
            app.router.add_get(route.path, route.handler, allow_head=True,  # HEAD: no body
                               expect_handler=_expect)
        else:
            app.router.add_route(route.method, route.path, route.handler,
                                 expect_handler=_expect)
    app.on_shutdown.append(_on_shutdown)
    return app


def _stop_listening(runner: web.AppRunner) -> None:
    """Close ``runner``'s listening sockets now, synchronously, from any thread: each comes off
    its loop's watch (unless that loop has ended) and is closed."""
    for site in runner.sites:
        server = getattr(site, "_server", None)  # aiohttp keeps the asyncio.Server there
        if server is not None:
            server.close()


class HttpHelper:
    """Serves ``peer`` over HTTP at ``host:port`` on the running loop (``port=0`` picks a free
    port; read it back from :attr:`address` after :meth:`start`).

    The arguments are checked as :class:`~qadom.peer.Peer` checks its own: InvalidType or
    InvalidArgument for a ``peer`` that is no Peer, a host no socket can bind, or a port that is
    not an int in [0, 65535] (a ``"80"``, ``True`` or ``1.5`` would otherwise bind port 80 or
    1).

    :meth:`start` is idempotent: concurrent calls bind one server. A :meth:`close` while
    starting waits for the start to be over, then closes what it bound.

    The helper serves on the event loop of its peer, as the peer does: :meth:`start` from any
    other loop raises :class:`~qadom.errors.WrongLoopError`, nothing bound. :meth:`close` works
    from any loop, as :meth:`Peer.close <qadom.peer.Peer.close>` does: from another thread
    while the helper's loop runs, it closes there and waits for it; once that loop has ended
    (a later ``asyncio.run()``, or its thread's ended), or while it stands idle, the listening
    socket is closed at once, here, and the connections still open are left to that loop
    (an ended loop serves them no more)."""

    def __init__(self, peer: Peer, host: str = "127.0.0.1", port: int = 0) -> None:
        if not isinstance(peer, Peer):
            raise InvalidType(f"peer must be a qadom Peer, not {type(peer).__name__}")
        self.peer = peer
        self.host = check_bind_host(host)
        self.port = check_port(port)
        self._runner: web.AppRunner | None = None
        self._starting: asyncio.Lock | None = None  # held by a start, and by a close
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it serves on
        self.address: Address | None = None

    def _lock(self) -> asyncio.Lock:
        if self._starting is None:
            self._starting = asyncio.Lock()
        return self._starting

    async def start(self) -> None:
        """Bind the server and serve the peer; PeerClosedError, before anything is bound, when
        the peer is not running, WrongLoopError when it runs on another event loop (or the
        helper serves on another already). A start cancelled or failed on the way leaves
        nothing bound."""
        loop = asyncio.get_running_loop()
        if self._runner is not None:
            if self._loop is not loop:
                raise WrongLoopError("this HTTP helper serves on another event loop (another "
                                     "thread's, or an earlier asyncio.run()'s): start and close "
                                     "it on its peer's loop")
            return
        self.peer._running()  # PeerClosedError, or WrongLoopError for a peer of another loop
        async with self._lock():
            if self._runner is not None:  # another start bound it meanwhile
                return
            app = make_app(self.peer)
            self._loop = loop
            # handler_cancellation: a client that hangs up cancels its handler, so an event
            # stream ends (and unsubscribes) as soon as its client is gone, not at the next
            # keepalive.
            # access_log=None: aiohttp's access log writes, for every request, header text the
            # client chose (User-Agent, Referer) unescaped into the operator's log.
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                                   shutdown_timeout=self.peer.config.http_shutdown_timeout)
            try:
                await runner.setup()
                site = web.TCPSite(runner, self.host, self.port)
                await site.start()
            except BaseException:
                await runner.cleanup()
                raise
            self._runner = runner
            sockname = runner.addresses[0]
            self.address = (str(sockname[0]), int(sockname[1]))

    @property
    def open_streams(self) -> int:
        """Event streams being served now."""
        return self._runner.app[STATE].subscriptions if self._runner is not None else 0

    async def close(self) -> None:
        """Stop serving (idempotent). A start under way is waited for, and what it bound is
        closed. From any loop: see the class docstring."""
        loop = self._loop
        if loop is not None and loop is not asyncio.get_running_loop():
            if loop.is_running() and await run_in_loop(loop, self._close_in_own_loop):
                return
            self._release_here()  # that loop ended, stands idle, or stopped meanwhile
            return
        async with self._lock():
            runner, self._runner = self._runner, None
            if runner is not None:
                await runner.cleanup()

    def _close_in_own_loop(self) -> asyncio.Future[None]:
        """On the helper's loop, for a close from another thread: the listening socket closes
        at once (so it is closed even if the loop stops before the rest), then the close runs
        there."""
        if self._runner is not None:
            _stop_listening(self._runner)
        return asyncio.ensure_future(self.close())

    def _release_here(self) -> None:
        """For a close from another loop while the helper's does not run: the listening socket
        is closed at once, the connections aborted (closed here when that loop has ended, by
        that loop when it runs again otherwise)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        _stop_listening(runner)
        ended = self._loop is None or self._loop.is_closed()
        server = runner.server
        for handler in server.connections if server is not None else []:
            transport = handler.transport
            if transport is None:
                continue
            with contextlib.suppress(RuntimeError):  # an ended loop cannot be handed the close
                transport.abort()
            lost: Any = getattr(transport, "_call_connection_lost", None)
            if ended and callable(lost):  # asyncio's transports: closes the socket here
                with contextlib.suppress(Exception):  # the handler's cleanup needs its loop
                    lost(None)

    async def __aenter__(self) -> HttpHelper:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
