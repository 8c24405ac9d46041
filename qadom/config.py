"""The one configuration dataclass: every limit and interval qadom uses, with the reason for it.

A :class:`Config` is immutable; derive a variant with :func:`dataclasses.replace`. Times are in
seconds, sizes in bytes. :meth:`Config.validate` runs on construction, so an impossible
configuration fails loudly at once rather than deep inside the protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import InvalidArgument, InvalidType

_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,),
                                       "str": (str,)}

_POSITIVE = ("expire_time", "republish_interval", "publisher_republish_interval",
             "publisher_renew_window",
             "token_lifetime", "request_rate", "host_request_rate", "given_up_retry",
             "given_up_lifetime", "dht_verify_rate")
"""Fields that must be above 0 (checked with the others in :meth:`Config.validate`)."""

_AT_LEAST_ONE = ("request_burst", "host_request_burst", "rate_limit_senders",
                 "amplification_factor", "max_search_pages", "republish_batch",
                 "http_max_bootstrap_addresses", "dht_verify_burst", "max_hand_over_recipients")
"""Counts that must be at least 1: with none, a node answers nobody (no burst, no sender tracked,
no bytes allowed to an unproven address), never does its job (no page fetched, no item
republished, no bootstrap address taken) or has no room for what it must note (the hand-over it
just made)."""

_NOT_NEGATIVE = ("dead_backoff", "liar_backoff", "verify_interval", "cache_min_lifetime",
                 "ping_before_evict_interval",
                 "max_verifying", "max_tokens", "min_request_size", "min_small_request_size",
                 "max_store_bytes", "max_store_items", "max_bytes_per_source",
                 "max_items_per_source", "max_given_up", "given_up_pings",
                 "socket_receive_buffer", "max_peer_rtts", "max_failed_rpcs",
                 "max_requests_in_flight", "max_queued_requests")
"""Fields for which 0 means none (no backoff, nothing stored...) and below 0 means nothing."""

_SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

MAX_CONTACTS = 64
"""The most contacts one reply may name on the wire (docs/PROTOCOL.md): receivers refuse a reply
naming more, so ``k`` can be no larger."""

# The most bytes the parts of a first SEARCH reply take as qadom.codec writes them (the codec
# cannot be imported here: it imports this module). tests/test_config_fits.py encodes the worst
# case of every reply naming up to k contacts with the codec at the largest k and page size
# validate() accepts, so these figures cannot drift from what the codec writes.
_WIRE_ID = 34
"""One value of an ENTRIES page: a 32-byte id and its 2-byte head."""
_WIRE_CONTACT = 85
"""One contact, ``[id, host, port]``: the array's head (1), the id (34), a host of 45 characters,
the longest textual IPv6 address (47 with its head), a port (3 from 256 up)."""
_WIRE_REPLY_OVERHEAD = 71
"""What an ENTRIES reply takes besides its values and contacts: the envelope's array head (1),
version (1), code (2), request id (9), sender id (34) and fields head (1); the heads of the
values (3 for 256 values or more) and contacts (2) arrays; ``more`` (1); and the token the reply
grants (17: the node mints 16 bytes). NODES and NODES_STORED take less: no values."""


def _head_size(n: int) -> int:
    """Bytes of the head of a CBOR item whose argument is ``n`` (RFC 8949's shortest form)."""
    return 1 if n < 24 else 2 if n < 256 else 3 if n < 65536 else 5 if n < 2**32 else 9


_JSON_ESCAPE = 6
"""The most bytes of JSON one byte of a /dht write's text takes: a control character is written
``\\u00XX`` (six bytes for one; a non-ASCII character's escape, ``\\u0416`` or a surrogate pair,
takes three per UTF-8 byte)."""
_BODY_MEMBERS = 1024
"""Bytes of a JSON write body besides its text or value, with room to spare: a /dht write's
member names, mode, uncompressed public key (130 hex digits), signature (128) and ``exp_time``
take about 330 bytes as ``json.dumps`` writes them (docs/HTTP.md's ``dht_body``), a namespace
write's signature and seq about 200."""


@dataclass(frozen=True, slots=True)
class Config:
    # --- Kademlia's system-wide parameters (Maymounkov & Mazieres, section 2) ---
    k: int = 20
    """Bucket size and replication factor. The paper's choice: with k = 20 it is very unlikely that
    all k contacts of a bucket fail within an hour of each other. At most ``MAX_CONTACTS`` (64),
    the most contacts one reply may name. The first reply to a SEARCH holds a page of values and k
    contacts, and must fit ``max_datagram_size`` with every contact's host 45 characters long
    (the longest IPv6 address): at the default ``search_page_size`` (160) and
    ``max_datagram_size`` k is at most 37, and k = 64 needs a page of at most 93 values.
    :meth:`validate` refuses a k and page that do not fit."""

    alpha: int = 3
    """Parallel requests in flight per lookup. The paper's choice: three hides one slow or dead peer
    without flooding the network."""

    replacement_cache_size: int = 20
    """Verified contacts kept per bucket to replace failed ones (paper section 4.1); k of them is
    enough to refill a whole bucket."""

    stale_failures: int = 3
    """Consecutive failed requests after which a contact leaves its bucket even when no replacement
    waits. The paper suggests a few (it says five); three keeps tables clean under churn while a
    contact behind 10% loss almost never reaches it: a request or its answer is lost in 19% of
    attempts, so both attempts of a request go unanswered about 4 times in 100, and three
    requests in a row about once in 20 000."""

    split_bits: int = 2
    """The paper's b (section 4.2, accelerated lookups): a full bucket whose range does not hold
    our id still splits while its depth (the leading bits its ids share) is not a multiple of
    b, so a lookup gains about b bits a round where it would gain one. 1 is the table of
    section 2.4 alone (the relaxed rule for our neighbourhood applies either way). With 2 the
    table holds about 1.4 times the contacts (every other level off our id's path keeps k in
    each half instead of k in all), a young network's sets verify more newcomers, and a reader
    far more often knows one of a key's holders: in 100 peers on loopback, 4 and 0 of 1 000
    gets from non-holders needed more than one request (two seeds), against 105 and 92 with 1
    (docs/BENCHMARKS.md). At most 5: the table grows about 2**b / b times."""

    max_bucket_contacts_per_prefix: int = 2
    """Contacts from one public /24 (IPv4) or /64 (IPv6) network allowed in one bucket, 0 for no
    limit. Ids are free to choose, so an attacker with many ids but few networks could otherwise
    fill the buckets around a key or a node (an eclipse); two per network per bucket, as discv5
    has, leaves honest hosts that share a network room. Loopback, private and link-local addresses
    are not limited: a LAN or one machine legitimately runs many peers."""

    max_table_contacts_per_prefix: int = 10
    """Contacts from one public /24 or /64 network allowed in the whole routing table, 0 for no
    limit; with the per-bucket limit, one network can hold a few percent of a full table at most
    (discv5's limit)."""

    max_lookup_contacts_per_prefix: int = 2
    """Candidates from one public /24 or /64 network allowed into one lookup, 0 for no limit. The
    routing table limits what we keep, but a lookup meets contacts that others name: without this,
    peers of one network could name each other until they are all a lookup sees near its target.
    Two, as in a bucket; loopback, private and link-local addresses are not limited."""

    lookup_max_candidates: int = 1024
    """Candidates one lookup keeps (and candidates refused for their network's share it keeps
    aside) at most; past it the farthest are forgotten (lookup.py says which). An honest lookup
    meets a few hundred at most: each of its few dozen replies names up to k contacts, mostly the
    same ones. Every reply costs time in proportion to the candidates kept, so the bound keeps
    peers that name endless new contacts from slowing every reply down. 16 full replies of 64;
    never below k."""

    lookup_max_requests: int = 512
    """Requests one lookup asks at most; it then ends once none is in flight. An honest lookup
    converges in O(log n) rounds of alpha requests plus a few for failed contacts, far below
    this even at millions of nodes; peers that keep naming ever closer contacts that answer would
    otherwise keep it asking until the operation's deadline, while whoever drives it keeps every
    reply."""

    # --- RPC timing ---
    rpc_timeout: float = 1.0
    """First-attempt timeout before any round trip has been measured: long enough for an
    intercontinental path, short enough that a dead first contact costs one second."""

    rpc_timeout_min: float = 0.25
    """Lower bound of the adaptive timeout (smoothed RTT + 4 x its deviation). Keeps a busy event
    loop on loopback from declaring live peers dead."""

    rpc_timeout_max: float = 2.0
    """Upper bound of the adaptive timeout: a peer slower than this is no help to a lookup."""

    max_peer_rtts: int = 1024
    """Addresses with a round-trip estimate of their own (those that answered later than the
    node-wide timeout: ``Node.rpc_timeout_to``), the least recently measured forgotten first; a
    forgotten one is timed by the node-wide estimate again and fails one request to earn its own
    back. Three floats each: a bound on memory, not a rule, far above the slow contacts a table
    holds (0: none; every address is timed by the node-wide estimate)."""

    max_failed_rpcs: int = 1024
    """Failed requests remembered for ``rpc_timeout_max`` after they fail, so that a reply that
    comes after all gives its address a round-trip sample of its own (``max_peer_rtts``); the
    oldest forgotten first. A node fails a few requests a second under heavy churn: this covers
    far more than the last two seconds of failures (0: none, a late reply is dropped unmeasured).
    """

    max_requests_in_flight: int = 32
    """Requests of ours out to one address at once; more wait, oldest first, until one of those
    is answered or fails (0: no limit). A burst of operations started together (thousands of
    gets a caller gathers) would otherwise send the few peers nearest their keys more datagrams
    in a moment than a socket buffer holds: the kernel drops them, every request to those peers
    times out, and the node puts its best contacts into backoff for its own excess, failing
    everything for half a minute. 32 requests of at most a few KB each stay well inside a peer's
    receive buffer, and far above what ordinary traffic keeps out to one address (a lookup has
    at most one request out to an address)."""

    max_queued_requests: int = 10_000
    """Requests waiting for a free place (``max_requests_in_flight``), all addresses together:
    one more fails at once, unsent, as if unanswered (but with no count against its address).
    A bound on memory, a request's datagram each (some hundred bytes, a full value's 8.5 KB at
    most): far above what a burst of a few thousand operations queues."""

    ping_before_evict_interval: float = 60.0
    """After a ping-before-evict that was answered, a bucket pings nobody for a newcomer for this
    long: newcomers meanwhile wait in the replacement cache, as they do after an answered ping.
    So a busy bucket pings at most once a minute while its pings are answered, instead of once
    per peer seen in passing (paper section 4.1 puts probes off until there is a reason to send
    them). Among 100 peers on loopback, 2.9 of the 3.5 PINGs per set were such pings, nearly all
    answered (docs/BENCHMARKS.md). A contact that died meanwhile is still found out by its failed
    requests, or by the first ping after this interval. 0: every newcomer to a full bucket sets
    off a ping (section 2.2 as written)."""

    rpc_retries: int = 1
    """Resends of a request that got no reply (same request id, so a late first reply still counts).
    One resend turns a 10% per-packet loss into about a 4% request failure rate. Two suit a very
    lossy network: in the simulator at 1 000 nodes and 10% loss, lookups then find the true
    closest node 99.4% of the time instead of 95.9%, but each departed contact costs one more
    timeout, so after 30% churn the median lookup takes 25% longer (docs/BENCHMARKS.md)."""

    probe_gets: bool = True
    """A get asks a likely holder of the value alone (see ``Node.holder_radius``) before asking
    alpha at a time: fewer messages (in a simulated network of 300 nodes with 10 to 50 ms per
    hop, 1.4 requests per get instead of 3.5) for a slower median (61 ms instead of 47: the
    probe's own round trip, not the fastest of three). False: every round asks alpha at once."""

    probe_hedge_rtts: float = 2.0
    """A get whose closest known contact is probably a holder asks that contact alone first
    (one request instead of alpha; see ``Node.holder_radius``) and asks alpha once it answers
    without the value, or after this many smoothed round trips (plus their deviation) without an
    answer. Two round trips leave a live probe time to answer before anyone else is bothered."""

    probe_hedge_min: float = 0.005
    """Floor of that hedge delay: on loopback a round trip is tens of microseconds, and a busy
    event loop delays answers by a few milliseconds without anything being wrong."""

    store_on_lookup_max: int = 1024
    """A set (or republish) of a value up to this size sends the value with the lookup's own
    requests (FIND_NODE_STORE): the peers asked that count themselves among the k closest keep
    it, and only the final k closest that did not get a separate STORE. That roughly halves the
    datagrams of a set. Larger values wait for the lookup to end, so they go only to the final k
    closest and not to the other peers the lookup passes through."""

    dead_backoff: float = 30.0
    """Lookups skip an address for this long once it is given up: ``dead_after_failures``
    requests to it failed in a row and, for a contact of the routing table, the table gave it up
    too (``stale_failures`` failed requests in a row, or one when a replacement waits). So a
    dead peer costs a few timeouts per wave of lookups, not one per lookup. A contact still in the
    table is not skipped after one failure: with 30% loss one request in four fails on a live
    peer, and skipping those made busy peers shun most of the network (30 peers on real sockets:
    3% of searches incomplete; none of 2000 once table contacts wait for ``stale_failures``)."""

    dead_after_failures: int = 2
    """Requests to one address that must fail in a row (each after every attempt went
    unanswered, and within ``dead_backoff`` of the one before: a failure is trusted no longer
    than the backoff it leads to) before lookups skip it for ``dead_backoff``. One failure is
    weak evidence under loss: with 10% loss a request and its resend both go unanswered about 4%
    of the time, and backing off after one put, in a simulated network of 40 nodes publishing 10
    messages a second, up to a third of a topic's true closest nodes in backoff at once, so that
    a quarter of the messages missed every relay of their subscribers. Two in a row happen to a
    live peer about once in 700 requests; a departed peer costs one more failed request per
    node, which a lookup does not wait for (a stalled request frees its slot at once)."""

    max_failure_counts: int = 10_000
    """How many addresses with fewer than ``dead_after_failures`` failures are remembered (each
    for ``dead_backoff`` after its last failure); past that the counts start afresh (a bound on
    memory, not a rule: it only delays a backoff). It bounds too the addresses whose silence is
    excused for a while after they answered RATE_LIMITED (``Node._note_limited``), the oldest
    forgotten first: a forgotten one's next unanswered requests count against its contact as
    any others do."""

    max_given_up: int = 256
    """Contacts the routing table gave up with no replacement waiting that a node remembers, to
    ping again later (the oldest are forgotten first; 0: none). Section 4.1 keeps such a contact
    in its bucket, only flagged, so that a node whose network goes down does not void its
    buckets; our table drops it after ``stale_failures`` failures (a departed contact would
    otherwise stay and be handed out in answers), and without this a network cut for hours
    stays split for good after it heals: each side gave up everyone across, and refresh lookups
    only meet their own side. 256 is most of a node's table in a network of a million (about
    k x log2(n / k) contacts, 312 at k = 20), and a few contacts across are enough: refresh
    lookups through them find the rest of their side."""

    given_up_pings: int = 4
    """Given-up contacts pinged at most per maintenance tick, and only those whose bucket has
    room for them (a full bucket would only queue an answer as a replacement): a bound on the
    traffic a cut or a wave of departures sets off, 4 a minute at the default tick."""

    given_up_retry: float = 300.0
    """The delay before a given-up contact is first pinged, and between its first two pings;
    each next one doubles, up to ``refresh_interval`` (pings 5, 10, 20, 40, 80 minutes after it
    was given up, then hourly): five minutes spares a contact that just failed (most of them
    left for good), and a cut of many hours still heals within about a refresh interval."""

    given_up_lifetime: float = 86400.0
    """How long a given-up contact is remembered (forgotten at the first maintenance tick after
    that): a day, about 25 pings of one that never answers; a cut longer than that heals only
    through the saved contacts or the bootstrap peers."""

    liar_backoff: float = 600.0
    """The address of a contact caught lying (a value that does not hash to its key, a forged
    signed record) is neither asked nor let back into the routing table for ten minutes: long
    enough that lying buys it nothing, short enough that an address reused by an honest node is
    not shut out for good."""

    operation_timeout: float = 30.0
    """Hard deadline of any one Peer operation (get, set, search...). Lookups normally end far
    sooner; this bounds the worst case so a caller never waits forever. A search reading a set
    of many pages has it for its lookup, then for each wait between two pages (so a long read
    completes while its pages keep coming, and one that stalls fails)."""

    verify_interval: float = 60.0
    """An unknown peer that sends us requests is pinged at most once per this interval before it
    may enter the routing table (a contact is added only after it has answered us)."""

    max_verifying: int = 10_000
    """Unknown requesters being verified at once. Past this, new requesters are served but not
    pinged, so a flood of spoofed sources cannot make us send unbounded pings. Requesters that
    proved their address with a token have as many of their own, which spoofed ones cannot use
    up."""

    # --- request rate limits (per sending address and per sending host) ---
    request_rate: float = 1000.0
    """Requests per second one address (host and port) may make of us, counted apart for requests
    that prove the address with a token and those that do not (so spoofed ones cannot spend a
    peer's own budget; the host limits below likewise). Writes set the need: each set or append
    sends each of the k closest peers to its key a request, and most a lookup step too, so a
    peer writing to keys one peer holds asks it about twice per write (one process on one core
    makes at most about 500 writes a second). A flood from one address costs us at most twice
    this many answers a second (proven and not), about 6% of a core."""

    request_burst: int = 2000
    """Requests one address may make at once before ``request_rate`` applies: a few hundred
    writes started together (each about two requests to each of the k closest)."""

    host_request_rate: float = 2000.0
    """Requests per second all the ports of one non-loopback host may make together, so that one
    machine cannot multiply ``request_rate`` by opening ports. Loopback is exempt: every peer of a
    local test network shares it."""

    host_request_burst: int = 4000
    """Requests one host may make at once before ``host_request_rate`` applies."""

    rate_limit_senders: int = 10_000
    """Senders whose rates are tracked at once (least recently seen forgotten first): bounded
    memory against a spoofed flood."""

    # --- amplification (docs/PROTOCOL.md, "Amplification") ---
    amplification_factor: int = 3
    """An address that has not proven it receives our datagrams (no valid token) never gets more
    than this many times the bytes it sent; bigger answers become a small Challenge carrying a
    token. Three, as QUIC allows before address validation."""

    min_request_size: int = 600
    """A request that may draw a large answer (FIND_NODE, FIND_VALUE, SEARCH...) to a peer that
    has given us no token yet is padded to this size, so that a full NODES answer (at most 1.7 KB
    with 20 IPv6 contacts) fits 3 x 600 bytes and the first contact costs no extra round trip.
    At most ``max_datagram_size - 4``, as ``min_small_request_size``."""

    min_small_request_size: int = 48
    """Every other request without a token is padded to this size (a PING with our id is 47
    bytes, 50 padded): three times it covers the largest small answer (a PONG, STORED or
    CHALLENGE with our id and a token, under 70 bytes). Unproven requests too small for even a
    CHALLENGE within the bound get no answer. Padding makes a request up to 4 bytes longer than
    this (docs/PROTOCOL.md, "Padding"), so it is at most ``max_datagram_size - 4`` (less for a
    limit of 65 536 or more, whose padding takes a longer head), as is ``min_request_size``."""

    token_lifetime: float = 300.0
    """How often the secret that tokens are minted from changes; a token stays valid for one to
    two lifetimes. A peer asked within a lifetime grants a fresh token before ours dies; a token
    that may have died goes with a padded request (docs/PROTOCOL.md, "Amplification"), so a
    stale token costs no CHALLENGE round trip for answers that fit the amplification bound."""

    max_tokens: int = 10_000
    """Tokens granted to us that we keep, one per peer address, the one that came longest ago
    dropped first (a token is placed by when it came; sending it does not move it). It bounds
    the tokens we mint for others too, those of the current secret and those of the previous
    one apart (each emptied when full: a token forgotten is only minted again). A bound on
    memory, not a rule: far above the peers a node exchanges with within a token's lifetime."""

    # --- sizes ---
    max_value_size: int = 8192
    """Largest value ``set`` accepts, inclusive: 8 KiB, as promised to qadom's users. At least
    512: a node's INFO summary travels as one value, and without its details (its id, address
    and counts) it takes up to about 350 bytes (:mod:`qadom.info`)."""

    max_datagram_size: int = 8192 + 512
    """Largest datagram sent or accepted: one full value plus its envelope. IP fragments larger
    datagrams transparently; a bound keeps memory per request small."""

    socket_receive_buffer: int = 4 * 1024 * 1024
    """Bytes the kernel may queue for our UDP socket before it drops what arrives (SO_RCVBUF;
    0 keeps the system's default). The default of Linux, about 208 KiB, holds about a hundred
    datagrams as the kernel counts them: a peer that starts a few hundred writes at once gets
    more answers than that in a moment, and each one dropped costs a retry or a write. The
    kernel caps the request at ``net.core.rmem_max``."""

    search_page_size: int = 160
    """Multimap values per search reply page: 160 x 34 bytes of values plus k contacts (at most
    85 bytes each, 1.7 KB at k = 20) stays well inside ``max_datagram_size`` (7.2 KB of 8.5 at
    the defaults). :meth:`validate` refuses a page that, with k contacts of 45-character hosts,
    does not fit."""

    max_search_pages: int = 1000
    """Pages fetched from one peer for one search: bounds a search of a hostile peer's endless
    answer (160 000 values)."""

    # --- maintenance (paper section 2.5 and 4) ---
    refresh_interval: float = 3600.0
    """A bucket that saw no lookup for this long is refreshed with a lookup of a random id in its
    range (paper section 2.3: one hour)."""

    # --- storage timing (paper section 2.5) ---
    expire_time: float = 86400.0
    """Lifetime of a stored item: 24 hours after its original publication, as in the paper. The
    lifetime travels with each STORE as a TTL, so storers' republishing never extends it; only
    the original publisher's republish does."""

    republish_interval: float = 3600.0
    """Storers republish each item to the k closest every hour (section 2.5), which repairs the
    replica set after churn; an item received by republish within the hour is skipped."""

    publisher_republish_interval: float = 86400.0
    """The original publisher republishes its items every 24 hours until it forgets them, which
    renews their lifetime everywhere; a little earlier when the lifetime is no longer than this
    (see :attr:`publisher_renew_after`)."""

    republish_batch: int = 200
    """Items republished per maintenance tick at most (values, entries and service records
    together; records get at least half when both are due), so a node holding many items spreads
    its republishing over several ticks instead of sending one burst: 12 000 an hour at the
    defaults. Our own items and records (original publisher) go first, the soonest due first;
    those we store for others take what room is left (see :attr:`publisher_renew_window`), so
    they wait while a whole batch of our own is due at every tick (more than 12 000 of our own
    due an hour, a restart after a day away with a store that large, or a batch of our own
    that our damaged store keeps refusing to rewrite): their other storers renew them meanwhile.

    It bounds hand-overs too (section 2.5: copies sent to a newcomer among our k closest): at
    most this many items per newcomer, and per host (a public address's /24 or /64, a private
    address; loopback is exempt) per ``republish_interval``, so that one network cycling ports
    and free ids buys one newcomer's share an hour, as an honest newcomer gets, not one a join
    (see ``Node._hand_over``)."""

    max_hand_over_recipients: int = 1024
    """Neighbours (by id), addresses, and hosts whose last hand-over a node remembers, each
    apart (``Node._hand_over``); at least 1. Past it the ids are all forgotten at once, and the
    oldest address or host first: at worst one more hand-over to a neighbour or an address, or
    a fresh budget to a host, that ``republish_interval`` would have refused. A hand-over goes
    only to a newcomer among our k closest, a few an hour under ordinary churn, so this is a
    bound on memory, far above the recipients one interval sees."""

    publisher_renew_window: float = 3600.0
    """How long before the copies of its last renewal expire (less ``operation_timeout``) the
    original publisher renews an item (at least one ``maintenance_interval``): the ticks in it
    carry a backlog of renewals that ``republish_batch`` holds back, 60 ticks of 200 at the
    defaults, so up to 12 000 of our own items published at once are all renewed in time (see
    :attr:`publisher_renew_after`). An hour early adds 1/23 to a publisher's renewals."""

    cache_min_lifetime: float = 60.0
    """Cached copies whose computed lifetime (24 h halved for each node between the cache and the
    key) falls below this are not sent: they would expire before helping anyone."""

    # --- storage quotas ---
    max_store_bytes: int = 256 * 1024 * 1024
    """Bytes one node stores for the network: 32 768 full-size values, far more than its share
    of a network of any size, and affordable on a laptop."""

    max_store_items: int = 1_000_000
    """Items (values and multimap entries) one node stores; bounds index memory."""

    max_bytes_per_source: int = 16 * 1024 * 1024
    """Bytes one sending host may make us store, so that one host cannot fill a node alone."""

    max_items_per_source: int = 100_000
    """Items one sending host may make us store: a tenth of ``max_store_items``, so that one host
    cannot fill a node's index alone."""

    sqlite_synchronous: str = "NORMAL"
    """SQLite's synchronous mode for a data dir. In WAL mode NORMAL makes every commit survive a
    killed process (what qadom promises before acknowledging a write); FULL also survives power
    loss at the cost of an fsync per write."""

    sqlite_busy_timeout: float = 0.1
    """Seconds a statement of a data dir's store waits for a lock another program holds before
    it is refused (StorageUnavailable), between 0 and 60. The node's whole event loop waits that
    long, so it is short: a qadom node is the only writer of its data dir (the data-dir lock sees
    to that), so only an outside program (a backup, the sqlite3 shell) can hold a lock, and one
    that keeps it is not waited for at every statement (SQLite's own default is 5 s)."""

    sqlite_wal_limit: int = 4 * 1024 * 1024
    """Bytes a data dir's write-ahead log is cut back to once SQLite has copied it into the
    database (its ``journal_size_limit``). One large transaction, such as the sweep of thousands
    of expired items, can grow the log far past its usual 4 MiB; without a limit the file keeps
    that size for as long as the store is open. 4 MiB is what SQLite's automatic checkpoint lets
    the log reach anyway, so the limit costs no extra writes."""

    maintenance_interval: float = 60.0
    """How often a node checks for stale buckets and forgets old bookkeeping. Finer than any
    interval it serves, coarse enough to cost nothing."""

    # --- HTTP helper (qadom.http) and its signed /dht records (qadom.dhtrecords) ---
    http_max_body_size: int = 6 * 8192 + 1024
    """Largest HTTP request body accepted (413 above it): a full 8 KiB value (10.7 KiB as a
    namespace write's base64), or a /dht write whose text fills a record of
    ``dht_max_record_size`` even as JSON escapes it (up to 6 bytes a byte: ``\\u0001`` for a
    control character), plus 1 KiB for the write's other members; :meth:`validate` refuses a
    limit below that (or below a full value's base64 plus 1 KiB). Small enough that a client
    cannot make the helper buffer much memory per request (49 KiB)."""

    http_sse_keepalive: float = 15.0
    """Seconds between comment lines on an idle Server-Sent Events stream, so that proxies and
    clients keep the connection open and a vanished client is noticed."""

    http_sse_write_timeout: float = 60.0
    """Seconds one write to a Server-Sent Events stream may wait for its client to read before
    the stream is cut. A slow client only loses messages (newer ones are dropped past the
    subscription's bounds); one that reads nothing at all would hold its stream, one of
    ``http_max_subscriptions``, for as long as it keeps the connection open: 64 such clients
    would shut everyone else out. A minute is far longer than any reading client stalls."""

    http_max_subscriptions: int = 64
    """Server-Sent Events streams open at once; each holds a subscription, so a client cannot open
    them without bound (503 beyond it)."""

    http_max_bootstrap_addresses: int = 64
    """Addresses one ``POST /bootstrap`` may name (400 beyond it): joining needs one that answers,
    and each costs a PING, so a request cannot make the node send without bound."""

    http_body_timeout: float = 30.0
    """Seconds the HTTP helper waits for a request's whole body (HTTP 408 past it, and the
    connection is closed). A client that sends a body a byte at a time would otherwise hold its
    handler, and the memory of what it sent, for as long as it likes; hundreds of them would hold
    as many. A body of at most ``http_max_body_size`` takes well under a second on any link that
    can use the helper."""

    http_shutdown_timeout: float = 2.0
    """How long closing the helper waits for requests in progress before it cuts them; streams
    never end by themselves, so this bounds every shutdown."""

    dht_max_key_size: int = 512
    """Longest /dht key, in UTF-8 bytes. Every write and record carries its key (the signature
    covers it), so it must stay a small part of a datagram."""

    dht_max_record_size: int = 8192
    """Largest encoded /dht record (all its entries), so a whole record travels in one reply
    datagram, like a value; at most ``max_value_size``."""

    dht_verify_rate: float = 200.0
    """Signatures per second the republished /dht records (DHT_PUT with ``republish``) of one
    non-loopback host may make us verify (a token bucket per host; over it the DHT_PUT is
    answered RATE_LIMITED, nothing stored). An entry we already hold byte for byte is not
    verified again, so this binds only entries new to us. One verification costs about 50 us,
    several times the handling of a PING, and a record of ``dht_max_record_size`` carries up to
    77 entries: unbounded, a host replaying one record we refuse (one bad signature last, a full
    quota) at ``host_request_rate`` would spend 7 CPU-seconds of ours a second. 200 a second is
    about 1% of a core per host (2% at 0.1 ms a verification); a record refused for it reaches
    us again by the next hourly republish of any of its k storers."""

    dht_verify_burst: int = 15_400
    """Signatures one host's republishes may make us verify at once before ``dht_verify_rate``
    applies: ``republish_batch`` (200) records of the most entries a record of
    ``dht_max_record_size`` holds (77), so a hand-over or one tick's republish batch passes
    whole whatever its records' entries (raise it when raising either). A verification costs
    about 50 us (measured; up to 0.1 ms on a slow core), so a host that spends it all, replaying
    or sending fresh records, costs 0.8 CPU-second (1.5 at 0.1 ms), then ``dht_verify_rate``'s
    share; the budget is whole again 77 s after it was spent."""

    # --- publish/subscribe (qadom.pubsub) ---
    pubsub_lease: float = 60.0
    """Lease a subscriber asks of each relay (the k closest peers to the topic). A relay that dies
    is replaced at the next renewal (``pubsub_renewals`` per lease), so a dead relay's place stays
    empty for about a third of a lease at most; a minute costs a few datagrams per topic per relay
    per minute. Subscriptions are not handed over (a relay cannot vouch for a subscriber's
    address), so peers that join closer to the topic than its relays get its subscribers at
    their next renewals too, within a third of a lease."""

    pubsub_max_lease: float = 600.0
    """Longest lease a relay grants: a subscriber that vanished without unsubscribing stops
    costing its relays forwards after at most ten minutes."""

    pubsub_renewals: int = 3
    """Renewals per lease (every lease / 3; per the lease most relays granted when that is
    shorter than asked, never more often than every ``rpc_timeout_min``): two renewals in a row
    may be lost before a lease lapses, and a dead relay is noticed and replaced within a third of
    a lease."""

    pubsub_max_subscribers: int = 1000
    """Subscribers one relay keeps per topic; each publish costs the relay one datagram per
    subscriber, so this bounds what one message can make it send."""

    pubsub_max_topics: int = 10_000
    """Topics one relay keeps subscribers for; bounds its memory against subscriptions to many
    random keys. It bounds too the subscriptions whose unanswered DELIVERs a relay counts
    (``pubsub_silent_deliveries``; the oldest count forgotten first), and the topics a publisher
    keeps a stream and outbox for: publishing to another topic forgets the one published to least
    recently among those with no message waiting for the lookup of their relays, and fails at
    once with RateLimited, nothing sent, when every one of them has one (see
    ``PubSubService.publish``, which says when an idle topic is forgotten)."""

    pubsub_rate: float = 100.0
    """Messages per second one sender may publish through one relay (a token bucket)."""

    pubsub_burst: int = 200
    """Messages a sender may publish back to back before ``pubsub_rate`` applies: short bursts
    pass, a sustained flood is refused with RATE_LIMITED."""

    pubsub_max_senders: int = 10_000
    """Senders whose rate a relay tracks at once (least recently seen forgotten first)."""

    pubsub_silent_deliveries: int = 3
    """Unanswered DELIVERs (every attempt) in a row after which a relay stops forwarding to a
    subscriber; an ERROR answer stops it at once, any other answer starts the count afresh.
    A failed DELIVER counts only if it failed at least ``(1 + rpc_retries) x rpc_timeout_max``
    (the longest a request takes to fail, 4 s at the defaults) after the last one counted: it
    was then sent after that one had failed, so each counted is a try of its own. DELIVERs out
    at the same time fail together (an outage of a second, a burst the subscriber could not
    all answer) and are one piece of evidence, not several; counting each would drop a
    subscriber cut off for a second, and it would lose every message until its next renewal (a
    third of a lease). One counted failure would cut a live subscriber off at every unlucky
    DELIVER (both attempts lost: about 1% of them at 5% loss); three, the first and the last
    sent 8 s apart (4.5 s should the timeouts shrink meanwhile) with no answer to anything in
    between, are a subscriber that is gone. One gone for good costs its relay three DELIVERs,
    or those sent within about 3 x 4 s = 12 s of the first it missed when messages come more
    often."""

    pubsub_streams_per_publisher: int = 4
    """Live streams one publisher address may have per topic at one relay; a PUBLISH opening
    another is refused (TOO_MANY_STREAMS). An honest node uses one stream per topic and opens a
    new one only after a restart or after forgetting the topic, so four leave room for three
    restarts within ``pubsub_stream_lifetime``. Each relay forwards at most this many streams of
    one address per topic within a stream lifetime, so one address can make a subscriber track at
    most k x 4 recent streams (80 of its ``pubsub_max_publishers`` at the defaults: filling them
    takes 13 addresses)."""

    pubsub_stream_lifetime: float = 60.0
    """How long a relay keeps a stream after its last message. While kept, the stream belongs to
    the address that opened it (a PUBLISH on it from another address is refused with
    STREAM_TAKEN) and counts against that address's ``pubsub_streams_per_publisher``. A minute is
    far longer than the copies of one message take to arrive (:attr:`pubsub_copy_window`, 8 s at
    the defaults; it must be at least one and a half times that, or a slot could serve two streams
    a subscriber still guards, and a Config that breaks this is refused), short enough that a
    publisher that restarted more often than that is refused only briefly. A publisher silent on
    a topic for nearly this long starts a new stream."""

    pubsub_max_streams: int = 10_000
    """Live streams one relay keeps in all topics (one host, all its ports together, at most a
    tenth); past this the least recently used is forgotten. About 500 bytes each (with the
    1 024-bit window of seqs taken), 5 MB in all; as many as the senders whose rate it tracks."""

    pubsub_reorder_timeout: float = 0.5
    """How long a subscriber holds messages behind a gap in one publisher's sequence, waiting for
    the missing one (a copy from another relay, or a retry after ``rpc_timeout_min``), before it
    gives the gap up and delivers what follows."""

    pubsub_reorder_buffer: int = 256
    """Messages held behind a gap per publisher; past this the gap is given up at once."""

    pubsub_reorder_bytes: int = 4 * 1024 * 1024
    """Bytes of messages a subscriber holds behind gaps per topic, all publishers together; past
    this the stream holding the most gives up its gap at once. Without it the bound would be
    ``pubsub_max_publishers x pubsub_reorder_buffer`` full-size messages, 2 GiB per topic, and a
    few publishers sending only out of order could make a subscriber hold that much. 4 MiB holds
    two whole buffers of full-size messages, far more than reordering leaves behind a gap."""

    pubsub_max_publishers: int = 1024
    """Publisher streams whose sequence a subscriber tracks per topic (for duplicates and order).
    The least recently heard is forgotten first, but never one heard within the time copies of a
    message take to arrive (so a late copy is never taken for a new message): while every
    tracked stream is that recent, a message of a new stream is dropped and counted."""

    pubsub_queue_size: int = 10_000
    """Messages a Peer subscription buffers for a consumer that does not keep up; past this new
    messages are dropped and counted (``stats["pubsub_dropped"]``, and the subscription's
    ``dropped``)."""

    pubsub_queue_bytes: int = 4 * 1024 * 1024
    """Bytes of messages (their values) a Peer subscription buffers for a consumer that does not
    keep up; past this new messages are dropped and counted as past ``pubsub_queue_size``. The
    count alone would let one subscription hold 10 000 full-size messages, 80 MiB; 4 MiB still
    holds 512 of them (five seconds of one publisher at ``pubsub_rate``), and the whole 10 000 of
    messages up to 419 bytes. At least ``max_value_size``, so any one message fits."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def pubsub_copy_window(self) -> float:
        """How far apart two copies of one published message can reach a subscriber, at most.

        Each copy crosses two hops, publisher to relay (PUBLISH) and relay to subscriber
        (DELIVER). Each hop is tried at most ``1 + rpc_retries`` times, a resend going out at most
        ``rpc_timeout_max`` after the attempt before it, so with datagrams in transit for less
        than ``rpc_timeout_max`` (the longest any request waits for its answer) a hop ends within
        ``(1 + rpc_retries) x rpc_timeout_max``, and every copy arrives within twice that of the
        publish: 8 s at the defaults."""
        return 2 * (1 + self.rpc_retries) * self.rpc_timeout_max

    @property
    def publisher_renew_after(self) -> float:
        """How long after publishing or renewing an item its original publisher renews it:
        ``publisher_republish_interval``, but early enough that the renewal has landed before
        the copies of the last one expire. A renewal is sent at a maintenance tick after its
        time and takes up to ``operation_timeout``; renewing exactly at ``expire_time``, as the
        paper's two 24 hours would, leaves every copy but the publisher's gone for up to a
        minute each day (measured in the simulator: 17 of 343 gets failed around the 24th
        hour), and renewing one tick early still leaves them gone for every tick a bulk of
        renewals waits for room in ``republish_batch`` (measured: 600 of 1000 values published
        at once were held by the publisher alone for up to three minutes). So at most
        ``expire_time - publisher_renew_window - operation_timeout`` (the window counted as one
        ``maintenance_interval`` at least: 22 h 59 min 30 s at the defaults), and at least half
        the lifetime.

        Guarantee: our own items and records are renewed before those we store for others, the
        soonest due first, at most ``republish_batch`` a tick. With ``w`` the maintenance ticks
        in ``expire_time - publisher_renew_after - operation_timeout`` (60 at the defaults: the
        window's), as long as at most ``w x republish_batch`` of our own items and records
        (12 000) fall due within any ``w`` ticks, a bulk of that many published at once for one,
        each renewal is sent within ``w`` ticks of its time and lands before the copies of the
        last one expire, while the publisher reaches its peers."""
        margin = max(self.publisher_renew_window, self.maintenance_interval)
        return max(min(self.publisher_republish_interval,
                       self.expire_time - margin - self.operation_timeout),
                   self.expire_time / 2)

    def validate(self) -> None:
        """Raise :class:`InvalidType` for a field of the wrong type (``bool`` is not a number
        here), :class:`InvalidArgument` for a value that cannot work (not finite, out of range)
        or values that cannot work together."""
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, _TYPES[str(field.type)]) or (
                    isinstance(value, bool) and field.type != "bool"):
                raise InvalidType(f"Config.{field.name} must be {field.type}, not "
                                  f"{type(value).__name__}")
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidArgument(f"Config.{field.name} must be a finite number, not {value}")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"Config.{name} must be positive, not {getattr(self, name)}")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise InvalidArgument(f"Config.{name} must be at least 1, not "
                                      f"{getattr(self, name)}")
        for name in _NOT_NEGATIVE:
            if getattr(self, name) < 0:
                raise InvalidArgument(f"Config.{name} must be 0 or more, not "
                                      f"{getattr(self, name)}")
        if self.sqlite_synchronous.upper() not in _SQLITE_SYNCHRONOUS:
            raise InvalidArgument(f"Config.sqlite_synchronous must be one of "
                                  f"{', '.join(_SQLITE_SYNCHRONOUS)}, not "
                                  f"{self.sqlite_synchronous!r}")
        if self.k < 1 or self.alpha < 1:
            raise InvalidArgument("k and alpha must be at least 1")
        if not 1 <= self.split_bits <= 5:
            raise InvalidArgument(f"split_bits must be in [1, 5], not {self.split_bits}")
        if self.k > MAX_CONTACTS:
            raise InvalidArgument(f"k must be at most {MAX_CONTACTS}, the most contacts a reply "
                                  f"may name, not {self.k}")
        if self.store_on_lookup_max < 0:
            raise InvalidArgument("store_on_lookup_max must be at least 0")
        if self.probe_hedge_rtts <= 0 or self.probe_hedge_min <= 0:
            raise InvalidArgument("probe_hedge_rtts and probe_hedge_min must be positive")
        if min(self.max_bucket_contacts_per_prefix, self.max_table_contacts_per_prefix,
               self.max_lookup_contacts_per_prefix) < 0:
            raise InvalidArgument("contacts per prefix limits must be 0 (none) or positive")
        if self.lookup_max_candidates < 1 or self.lookup_max_requests < 1:
            raise InvalidArgument("lookup_max_candidates and lookup_max_requests must be >= 1")
        if self.dead_after_failures < 1 or self.max_failure_counts < 1:
            raise InvalidArgument("dead_after_failures and max_failure_counts must be >= 1")
        if self.replacement_cache_size < 0 or self.stale_failures < 1 or self.rpc_retries < 0:
            raise InvalidArgument("replacement cache, stale_failures or rpc_retries out of range")
        if not 0 < self.rpc_timeout_min <= self.rpc_timeout <= self.rpc_timeout_max:
            raise InvalidArgument("need 0 < rpc_timeout_min <= rpc_timeout <= rpc_timeout_max")
        if self.max_value_size < 512:
            raise InvalidArgument("max_value_size must be at least 512 (an INFO summary fits)")
        if self.max_datagram_size < self.max_value_size + 256:
            raise InvalidArgument("max_datagram_size must exceed max_value_size by 256 bytes")
        if self.search_page_size < 1:
            raise InvalidArgument(f"Config.search_page_size must be at least 1, not "
                                  f"{self.search_page_size}")
        # The first page of a search is the largest reply that names contacts (NODES and
        # NODES_STORED are that page without its values), so it fitting covers them all; the
        # replies carrying a record (NAMESPACE_FOUND, DHT_RECORD) name as many as fit.
        reply = (_WIRE_REPLY_OVERHEAD + self.search_page_size * _WIRE_ID
                 + self.k * _WIRE_CONTACT)
        if reply > self.max_datagram_size:
            raise InvalidArgument(
                f"Config.search_page_size ({self.search_page_size}) and k ({self.k}) do not fit "
                f"max_datagram_size ({self.max_datagram_size}): a first SEARCH reply may take "
                f"{reply} bytes (values of {_WIRE_ID} bytes, contacts of up to {_WIRE_CONTACT}, "
                f"{_WIRE_REPLY_OVERHEAD} more); lower either")
        # A padded request is up to this much longer than its minimum: the null token before
        # the padding (1 byte) and the padding's head (qadom.codec.Codec.encode_parts).
        framing = 1 + _head_size(self.max_datagram_size)
        for name in ("min_request_size", "min_small_request_size"):
            if getattr(self, name) > self.max_datagram_size - framing:
                raise InvalidArgument(
                    f"Config.{name} must be at most {self.max_datagram_size - framing} "
                    f"(max_datagram_size less the {framing} bytes padding adds past it), not "
                    f"{getattr(self, name)}")
        if min(self.operation_timeout, self.refresh_interval, self.maintenance_interval) <= 0:
            raise InvalidArgument("operation_timeout and the intervals must be positive")
        if self.sqlite_wal_limit < 0:
            raise InvalidArgument("sqlite_wal_limit must be at least 0 bytes")
        if not 0 <= self.sqlite_busy_timeout <= 60:
            raise InvalidArgument("sqlite_busy_timeout must be between 0 and 60 seconds")
        if not 0 < self.dht_max_record_size <= self.max_value_size or self.dht_max_key_size < 1:
            raise InvalidArgument("need 0 < dht_max_record_size <= max_value_size, dht_max_key_size"
                                  " >= 1")
        # A namespace write carries its value as base64, 4 bytes per 3 (a raw value is less).
        body = max(4 * -(-self.max_value_size // 3),
                   _JSON_ESCAPE * self.dht_max_record_size) + _BODY_MEMBERS
        if self.http_max_body_size < body:
            raise InvalidArgument(
                f"Config.http_max_body_size must be at least {body}, not "
                f"{self.http_max_body_size}: a /dht write whose text fills a record "
                f"(dht_max_record_size) takes up to {_JSON_ESCAPE} bytes of JSON a byte, a "
                f"value (max_value_size) 4 a 3 as base64, plus {_BODY_MEMBERS} for the other "
                f"members")
        if self.http_max_subscriptions < 0 or min(
                self.http_sse_keepalive, self.http_shutdown_timeout,
                self.http_sse_write_timeout, self.http_body_timeout) <= 0:
            raise InvalidArgument("http_max_subscriptions must be 0 or more; http intervals "
                                  "positive")
        if min(self.pubsub_lease, self.pubsub_max_lease, self.pubsub_rate,
               self.pubsub_reorder_timeout, self.pubsub_stream_lifetime) <= 0 or min(
                self.pubsub_renewals, self.pubsub_max_subscribers, self.pubsub_max_topics,
                self.pubsub_burst, self.pubsub_max_senders, self.pubsub_reorder_buffer,
                self.pubsub_silent_deliveries,
                self.pubsub_reorder_bytes,
                self.pubsub_max_publishers, self.pubsub_queue_size,
                self.pubsub_streams_per_publisher, self.pubsub_max_streams) < 1:
            raise InvalidArgument("pubsub times and rates must be positive, its bounds at least 1")
        if self.pubsub_queue_bytes < self.max_value_size:
            raise InvalidArgument("pubsub_queue_bytes must hold a value (max_value_size bytes)")
        if self.pubsub_stream_lifetime < 1.5 * self.pubsub_copy_window:
            raise InvalidArgument(
                f"pubsub_stream_lifetime must be at least 1.5 x the copy window of a message, "
                f"2 x (1 + rpc_retries) x rpc_timeout_max = {self.pubsub_copy_window:g} s")
