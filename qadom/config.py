"""The one configuration dataclass: every limit and interval qadom uses, with the reason for it.

A :class:`Config` is immutable; derive a variant with :func:`dataclasses.replace`. Times are in
seconds, sizes in bytes. :meth:`Config.validate` runs on construction, so an impossible
configuration fails loudly at once rather than deep inside the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Config:
    # --- Kademlia's system-wide parameters (Maymounkov & Mazieres, section 2) ---
    k: int = 20
    """Bucket size and replication factor. The paper's choice: with k = 20 it is very unlikely that
    all k contacts of a bucket fail within an hour of each other."""

    alpha: int = 3
    """Parallel requests in flight per lookup. The paper's choice: three hides one slow or dead peer
    without flooding the network."""

    replacement_cache_size: int = 20
    """Verified contacts kept per bucket to replace failed ones (paper section 4.1); k of them is
    enough to refill a whole bucket."""

    stale_failures: int = 3
    """Consecutive failed requests after which a contact leaves its bucket even when no replacement
    waits. The paper suggests a few (it says five); three keeps tables clean under churn while a
    contact behind 10% loss (both attempts lost: 1 in 100 requests) almost never reaches it."""

    # --- RPC timing ---
    rpc_timeout: float = 1.0
    """First-attempt timeout before any round trip has been measured: long enough for an
    intercontinental path, short enough that a dead first contact costs one second."""

    rpc_timeout_min: float = 0.25
    """Lower bound of the adaptive timeout (4 x smoothed RTT). Keeps a busy event loop on loopback
    from declaring live peers dead."""

    rpc_timeout_max: float = 2.0
    """Upper bound of the adaptive timeout: a peer slower than this is no help to a lookup."""

    rpc_retries: int = 1
    """Resends of a request that got no reply (same request id, so a late first reply still counts).
    One resend turns a 10% per-packet loss into about a 4% request failure rate."""

    dead_backoff: float = 30.0
    """After a request fails completely, lookups skip that address for this long, so one dead peer
    costs one timeout per lookup wave and not one per lookup."""

    operation_timeout: float = 30.0
    """Hard deadline of any one Peer operation (get, set, search...). Lookups normally end far
    sooner; this bounds the worst case so a caller never waits forever."""

    verify_interval: float = 60.0
    """An unknown peer that sends us requests is pinged at most once per this interval before it
    may enter the routing table (a contact is added only after it has answered us)."""

    max_verifying: int = 10_000
    """Unknown requesters being verified at once. Past this, new requesters are served but not
    pinged, so a flood of spoofed sources cannot make us send unbounded pings."""

    # --- sizes ---
    max_value_size: int = 8192
    """Largest value ``set`` accepts, inclusive: 8 KiB, as promised to qadom's users."""

    max_datagram_size: int = 8192 + 512
    """Largest datagram sent or accepted: one full value plus its envelope. IP fragments larger
    datagrams transparently; a bound keeps memory per request small."""

    search_page_size: int = 160
    """Multimap values per search reply page: 160 x 34 bytes of values plus k contacts (about
    1.7 KB) stays well inside ``max_datagram_size``."""

    max_search_pages: int = 1000
    """Pages fetched from one peer for one search: bounds a search of a hostile peer's endless
    answer (160 000 values)."""

    # --- maintenance (paper section 2.5 and 4) ---
    refresh_interval: float = 3600.0
    """A bucket that saw no lookup for this long is refreshed with a lookup of a random id in its
    range (paper section 2.3: one hour)."""

    maintenance_interval: float = 60.0
    """How often a node checks for stale buckets and forgets old bookkeeping. Finer than any
    interval it serves, coarse enough to cost nothing."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InvalidArgument` if the values cannot work together."""
        if self.k < 1 or self.alpha < 1:
            raise InvalidArgument("k and alpha must be at least 1")
        if self.replacement_cache_size < 0 or self.stale_failures < 1 or self.rpc_retries < 0:
            raise InvalidArgument("replacement_cache_size, stale_failures, rpc_retries out of range")
        if not 0 < self.rpc_timeout_min <= self.rpc_timeout <= self.rpc_timeout_max:
            raise InvalidArgument("need 0 < rpc_timeout_min <= rpc_timeout <= rpc_timeout_max")
        if self.max_value_size < 1 or self.max_datagram_size < self.max_value_size + 256:
            raise InvalidArgument("max_datagram_size must exceed max_value_size by 256 bytes")
        if self.search_page_size < 1 or self.search_page_size * 34 + self.k * 80 + 128 > (
            self.max_datagram_size
        ):
            raise InvalidArgument("search_page_size does not fit in max_datagram_size")
        if min(self.operation_timeout, self.refresh_interval, self.maintenance_interval) <= 0:
            raise InvalidArgument("operation_timeout and the intervals must be positive")
