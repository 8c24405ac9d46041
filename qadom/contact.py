"""A contact: what one node knows of another (its id and the UDP address it answered from)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import InvalidArgument, InvalidType

Address = tuple[str, int]
"""A UDP address as ``(host, port)``; the host is an IP literal."""


_SCOPE = re.compile(r"[0-9A-Za-z._-]{1,15}")
"""An IPv6 zone: an interface name (at most 15 characters on Linux) or index."""


def is_ip_literal(host: str) -> bool:
    """True if ``host`` is an IPv4 or IPv6 literal that a socket can send to: an IPv6 zone
    (``fe80::1%eth0``) must be an interface name or number, never arbitrary text (a NUL or
    non-ASCII character in it makes ``sendto`` fail with an error that closes the socket)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    _, percent, zone = host.partition("%")
    return not percent or _SCOPE.fullmatch(zone) is not None


def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address, an IPv6 zone left out and an IPv4-mapped address taken as its
    IPv4 address; None if ``host`` is not an IP literal."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_bind_host(host: object) -> str:
    """``host`` if a socket may be asked to bind it: an IP literal, a name the resolver can be
    asked about, or "" (every interface: a :class:`~qadom.peer.Peer`'s UDP socket binds it as
    0.0.0.0, every IPv4 one, "::" being the IPv6 spelling); InvalidType for a non-str,
    InvalidArgument for a host no socket can bind (a NUL, which the resolver would cut the name
    at; an IPv6 zone that names no interface; a name with an empty or overlong label). Whether a
    name resolves is found out when the socket is bound."""
    if not isinstance(host, str):
        raise InvalidType("host must be a str")
    if "\0" in host:
        raise InvalidArgument(f"host {host!r} contains a NUL character")
    if "%" in host and not is_ip_literal(host):
        raise InvalidArgument(f"{host!r} has an IPv6 zone that names no interface")
    return check_host_name(host)


_HOST_KEYS: dict[str, str] = {}  # host -> its host_key (a bounded memo)
_HOST_KEYS_MAX = 16_384


def host_key(host: str) -> str:
    """What the per-host budgets (request rates, storage quotas, subscriptions) count as one
    host: an IPv4 address itself; for IPv6 its /64 network, since an end site holds at least a
    /64 and counting each of its addresses as a host would give one machine 2**64 budgets (an
    IPv4-mapped address counts as its IPv4 address). A link-local IPv6 address is its own key,
    zone included: every link's is in fe80::/64, which is no end site's but every neighbour's on
    every link. Anything else is its own key."""
    key = _HOST_KEYS.get(host)
    if key is None:
        address = ip_of(host)
        if address is None or (address.version == 6 and address.is_link_local):
            key = host
        elif address.version == 4:
            key = str(address)
        else:
            key = str(ipaddress.IPv6Network(f"{address}/64", strict=False))
        if len(_HOST_KEYS) >= _HOST_KEYS_MAX:
            _HOST_KEYS.clear()
        _HOST_KEYS[host] = key
    return key


LOOPBACK, LOCAL, GLOBAL = 0, 1, 2
"""The scopes of :func:`address_scope` that a peer may stand at, narrowest first."""

NOWHERE = -1
"""The scope of :func:`address_scope` of an address that is no peer's: a multicast address, or
the IPv4 broadcast 255.255.255.255 (a datagram sent there reaches every host of a network)."""

_SCOPES: dict[str, int] = {}  # host -> its address_scope (a bounded memo)
_SCOPES_MAX = 16_384

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_RESERVED_V6 = ipaddress.IPv6Network("::/8")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that a datagram sent to the IPv6 ``address`` is carried to, when the
    address embeds one: under NAT64's well-known prefix 64:ff9b::/96 (RFC 6052, a translator
    sends it on to that IPv4 address), 6to4's 2002::/16 (RFC 3056), Teredo's 2001::/32 (its
    client's address, RFC 4380), or in the rest of ::/8 as its last 32 bits (the deprecated
    IPv4-compatible ``::a.b.c.d``, which an automatic tunnel carries there). None otherwise, and
    for ``::`` and ``::1``."""
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    sixtofour = address.sixtofour
    if sixtofour is not None:
        return sixtofour
    teredo = address.teredo
    if teredo is not None:
        return teredo[1]
    if address in _RESERVED_V6 and not (address.is_loopback or address.is_unspecified):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _scope_of(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    if address.is_multicast:
        return NOWHERE
    if address.is_loopback or address.is_unspecified:
        return LOOPBACK
    if address.version == 4:
        if address == _BROADCAST:
            return NOWHERE
        # is_global is False for the reserved 240.0.0.0/4 too.
        return GLOBAL if address.is_global else LOCAL
    assert isinstance(address, ipaddress.IPv6Address)
    embedded = embedded_ipv4(address)
    if embedded is not None:
        # What the datagram reaches: never wider than the IPv4 address it is carried to. NAT64
        # and 6to4 carry it across the Internet; a Teredo address (which IANA's registry does
        # not call globally reachable) and a deprecated IPv4-compatible one are reached
        # through a tunnel of this machine's, if at all.
        wide = GLOBAL if address in _NAT64 or address.sixtofour is not None else LOCAL
        return min(wide, _scope_of(embedded))
    if address.is_site_local or address.is_reserved:  # routed nowhere on the Internet
        return LOCAL
    return GLOBAL if address.is_global else LOCAL


def address_scope(host: str) -> int:
    """How far out ``host`` is: NOWHERE (no peer's: a multicast address, or the IPv4 broadcast
    255.255.255.255), LOOPBACK (this machine: a loopback address, or the unspecified 0.0.0.0 or
    ::, which a datagram sent to reaches this machine too), LOCAL (a private, link-local,
    site-local, reserved or other address that is not globally routable) or GLOBAL. An IPv6
    address that embeds the IPv4 address a datagram sent to it is carried to
    (:func:`embedded_ipv4`) is no wider than that IPv4 address, and a Teredo or IPv4-compatible
    one is LOCAL at most. An IPv4-mapped address has its IPv4 address's scope; a host that is
    not an IP literal is LOCAL."""
    scope = _SCOPES.get(host)
    if scope is None:
        address = ip_of(host)
        scope = LOCAL if address is None else _scope_of(address)
        if len(_SCOPES) >= _SCOPES_MAX:
            _SCOPES.clear()
        _SCOPES[host] = scope
    return scope


_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)


def port_number(text: str) -> int | None:
    """The port ``text`` spells in 1 to 5 ASCII digits, if it is in [0, 65535]; else None."""
    if not _PORT.fullmatch(text) or int(text) > 65535:
        return None
    return int(text)


def check_host_name(text: str) -> str:
    """``text`` if a resolver can be asked about it: its IDNA form (what getaddrinfo sends)
    exists, with no empty label and none over 63 characters; InvalidArgument otherwise. Whether
    it resolves is found out when it is used."""
    try:
        text.encode("idna")
    except UnicodeError as exc:
        reason = exc.__cause__ or exc  # the codec wraps the reason ("label empty or too long")
        raise InvalidArgument(f"cannot resolve {text!r}: not a valid host name ({reason})"
                              ) from None
    return text


def format_address(address: Address) -> str:
    """``host:port``, with IPv6 hosts in brackets (``[::1]:9999``), as :func:`parse_host_port`
    reads it back."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str) -> Address:
    """``"HOST:PORT"`` (``"[::1]:9999"`` for IPv6) as the address of a peer to reach.
    Guarantees: brackets balance and enclose the whole host, the port is written in ASCII digits
    and is in [1, 65535] (port 0 names no peer), a host with a colon in it is an IPv6 literal
    (the port follows the last colon: ``"::1:9999"`` is ``::1`` port 9999, and ``"::1"`` alone
    has no port), the host passes :func:`check_host_name`; InvalidArgument otherwise."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if (not sep or not host or "[" in host or "]" in host
            or (":" in host and ip_of(host) is None)):  # an IPv6 address with no port after it
        raise InvalidArgument(f"expected HOST:PORT ([HOST]:PORT for IPv6), got {text!r}")
    port = port_number(port_text)
    if port is None and ip_of(text) is not None:  # "::ffff:1.2.3.4": no port either
        raise InvalidArgument(f"expected HOST:PORT ([HOST]:PORT for IPv6), got {text!r}")
    if not port:  # None or 0
        raise InvalidArgument(
            f"port must be an integer in [1, 65535], not {port_text!r} (in {text!r})")
    return check_host_name(host), port


def unreachable_from(host: str, addresses: Iterable[Address]) -> tuple[Address, int, int] | None:
    """The first of ``addresses`` that is an IP address of the other family than a socket bound
    on ``host`` (one UDP socket reaches one IP family), with its IP version and the socket's;
    None when there is none. Host names are resolved in the socket's family when used, so they
    are never named here."""
    version = 6 if ":" in host else 4
    for address in addresses:
        if is_ip_literal(address[0]):
            other = ipaddress.ip_address(address[0]).version
            if other != version:
                return address, other, version
    return None


@dataclass(frozen=True, slots=True)
class Contact:
    """A node id and its address. Immutable and hashable, so it can sit in sets and dict keys."""

    id: int
    address: Address
    wire: bytes | None = field(default=None, init=False, compare=False, repr=False)
    """The contact's CBOR as a NODES reply carries it, written by :mod:`qadom.codec` the first
    time it is sent (a routing table's contacts are sent over and over); not part of equality."""

    def __repr__(self) -> str:
        return f"Contact({self.id:064x}"[:17] + f"…, {format_address(self.address)})"


class _ContactSlots:
    """The slots of :class:`Contact`, in its order, without the frozen dataclass's
    ``__setattr__``: :func:`make_contact` fills one with plain attribute stores and then makes it
    a Contact (same slots, so the same layout: what ``__class__`` assignment requires)."""

    __slots__ = Contact.__slots__
    id: int
    address: Address
    wire: bytes | None


def make_contact(node_id: int, address: Address) -> Contact:
    """What ``Contact(node_id, address)`` builds (equal, of type Contact, as frozen, no wire
    bytes yet), at a fraction of the cost: the frozen dataclass's ``__init__`` sets each slot
    through ``object.__setattr__`` by name, and setting them through the slot descriptors costs
    a call each, where a class without the frozen ``__setattr__`` stores them directly. For the
    hot paths (every reply received, every contact decoded)."""
    contact = _ContactSlots()
    contact.id = node_id
    contact.address = address
    contact.wire = None
    contact.__class__ = Contact  # type: ignore[assignment]
    return contact  # type: ignore[return-value]
