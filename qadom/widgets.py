"""ipywidgets views of qadom at work: one lookup round by round, a routing table, a whole network.

Each view keeps a small model of what it shows (plain Python, readable in tests and at the
prompt) and renders it into an ipywidgets widget, ``view.widget``; a view displays itself in
Jupyter. The views follow the core's lookup events (:mod:`qadom.events`) through the
``add_listener`` of a :class:`~qadom.peer.Peer` or a :class:`~qadom.node.Node`, so they update
*while* a lookup runs, on real sockets and in the simulator alike (the simulator runs the same
core). A view only reads the node it watches; it never changes it.

* :class:`LookupView`: the peers one lookup asked, grouped by round (a peer's round is one more
  than the round of the peer that named it), closest to the target first, coloured by what became
  of the request, with a chart of how many leading bits each shares with the target: the lookup
  converging on the target is the chart climbing round after round.
* :class:`RoutingTableView`: each k-bucket's id prefix, how full it is, and who is in it.
* :class:`NetworkView`: every node of a :class:`~qadom.sim.SimNetwork` (or a list of local peers)
  on the id ring, with the lookup in progress drawn on it: its target, the peers asked and who
  named whom.

:func:`play` runs a simulated operation event by event with short real pauses, so the views
attached to it can be watched converging in a notebook.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import ipywidgets as widgets

from .call import Call
from .contact import Contact
from .errors import InvalidArgument, InvalidType, PeerClosedError
from .events import (
    LookupEvent,
    LookupFinished,
    LookupReply,
    LookupRequest,
    LookupStarted,
    LookupTimeout,
)
from .ids import ID_BITS, ID_SPACE, check_id
from .node import Node
from .peer import Peer
from .sim import _count

T = TypeVar("T")
log = logging.getLogger("qadom.widgets")

# The smallest drawings that still have room inside their margins: the chart's axes and labels
# take 28 pixels on each side of a plot 5/8 as high as it is wide, the ring 28 pixels around a
# circle (its margin and the target's mark). Below these a view would draw a negative size.
MIN_CHART_SIZE = 100
MIN_RING_SIZE = 100

# What became of a request, and its colour: the same in every view.
ASKED = "asked"  # sent, no reply (yet); stays so if the lookup ended before an answer
ANSWERED = "answered"
VALUE = "value"  # answered with the value sought
STALLED = "stalled"  # first attempt timed out; a retry is on its way
FAILED = "failed"  # no answer at all
COLOURS = {ASKED: "#f0ad4e", ANSWERED: "#5cb85c", VALUE: "#0275d8", STALLED: "#c9a227",
           FAILED: "#d9534f"}
# The kinds of lookup the core runs (LookupStarted.kind), which a LookupView can be told to show.
LOOKUP_KINDS = ("node", "value", "search", "namespace", "dht")
_KINDS = ", ".join(map(repr, LOOKUP_KINDS))
LEGEND = " ".join(
    f"<span style='background:{colour};color:white;border-radius:4px;padding:0 5px;"
    f"font:11px sans-serif'>{state}</span>" for state, colour in COLOURS.items()
) + " <small>(the number under an id: leading bits it shares with the target)</small>"


class EventSource(Protocol):
    """Anything with the core's ``add_listener``: a Peer or a Node."""

    def add_listener(self, fn: Callable[[LookupEvent], None]) -> Callable[[], None]: ...


def short(node_id: int) -> str:
    """The first 8 hex digits of an id: enough to tell peers apart on screen."""
    return f"{node_id:064x}"[:8]


def shared_bits(a: int, b: int) -> int:
    """How many leading bits two ids share (256 when equal): the XOR distance on a log scale."""
    return ID_BITS - (a ^ b).bit_length()


@dataclass
class AskedPeer:
    """One peer a lookup asked, and what became of it."""

    contact: Contact
    distance: int
    round: int
    state: str = ASKED
    named: int = 0  # contacts it named that the lookup had not seen

    @property
    def bits(self) -> int:
        """Leading bits shared with the target."""
        return ID_BITS - self.distance.bit_length()


def _node_of(source: Any) -> Node:
    """The node of ``source``, a running Peer or a Node: PeerClosedError for a Peer that is not
    running, InvalidType for anything else."""
    if isinstance(source, Peer):
        _check_running(source)
        return source.node
    if not isinstance(source, Node):
        raise InvalidType(f"expected a Peer or a Node, not {type(source).__name__}")
    return source


def _check_source(source: object) -> None:
    """Nothing if a view can follow the lookups of ``source``: a running Peer, a Node, or
    anything else with a callable ``add_listener``. PeerClosedError for a Peer that is not
    running (its lookups are over, or have not begun), InvalidType otherwise."""
    if isinstance(source, Peer):
        _check_running(source)
    elif not isinstance(source, Node) and not callable(getattr(source, "add_listener", None)):
        raise InvalidType(f"a view follows a Peer or a Node, not {type(source).__name__}")


def _check_running(peer: Peer) -> None:
    if peer.closed:
        raise PeerClosedError("the peer is closed: a view follows a running peer")
    if not peer.running:
        raise PeerClosedError("the peer is not running (not started yet, or its socket or its "
                              "event loop is gone)")


def _check_kind(kind: object) -> str:
    """``kind`` if it is one of :data:`LOOKUP_KINDS`: InvalidType unless a str,
    InvalidArgument for another one."""
    if not isinstance(kind, str):
        raise InvalidType(f"kind must be a str, one of {_KINDS}; not {type(kind).__name__}")
    if kind not in LOOKUP_KINDS:
        raise InvalidArgument(f"kind must be one of {_KINDS} (a get's lookup is 'value'), "
                              f"not {kind!r}")
    return kind


def _seconds(name: str, value: Any) -> float:
    """``value`` as a finite number of seconds, at least 0: InvalidType unless it is a number (a
    bool is not one), InvalidArgument when it is negative or not finite (NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidType(f"{name} must be a number of seconds, not {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise InvalidArgument(f"{name} must be a finite number of seconds, at least 0, "
                              f"not {value!r}")
    return float(value)


class _View:
    """What every view shares: following a source, and closing.

    Guarantee: once the view is closed, by :meth:`close` or by closing its widget (from Python,
    ``view.widget.close()``, or from the front end, which closes the widget's comm), it no longer
    listens to any node and its widgets are closed, so that it costs the node nothing; a closed
    view does not follow a source again. A view is not closed by clearing the output that shows
    it (the widget lives on in the kernel): a cell that is run again should close the views its
    last run made, e.g. ``view.close()`` before making a new one."""

    widget: Any
    errors = 0  # events a view failed to show (logged); the node it watches is not affected
    closed = False
    _unsubscribe: Callable[[], None] | None = None

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _follow(self, source: EventSource, fn: Callable[[LookupEvent], None]) -> None:
        """Listen to ``source`` with ``fn`` (guarded) instead of any earlier source."""
        if self.closed:
            raise RuntimeError(f"this {type(self).__name__} is closed; make a new one")
        _check_source(source)  # before the source followed until now is let go
        self.detach()
        self._unsubscribe = source.add_listener(self._guard(fn))

    def detach(self) -> None:
        """Stop following the source (the view keeps showing what it showed)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def close(self) -> None:
        """Stop following the source and close the view's widgets (the front end removes them).
        Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.detach()
        _close_tree(self.widget)

    def _close_with_widget(self) -> None:
        """Close the view when its widget is closed: ``widget.close()`` (its ``comm`` becomes
        None) or the front end closing the widget's comm."""
        self.widget.observe(self._on_comm, names="comm")
        self._on_comm({"new": self.widget.comm})

    def _on_comm(self, change: dict[str, Any]) -> None:
        comm = change["new"]
        if comm is None:
            self.close()
        elif callable(getattr(comm, "on_close", None)):
            comm.on_close(lambda message: self.close())

    def _guard(self, fn: Callable[[LookupEvent], None]) -> Callable[[LookupEvent], None]:
        """``fn`` as a listener that never raises into the node, counting its failures in the
        view's ``errors`` (the node would log and count them too, as ``listener_errors``)."""
        def listener(event: LookupEvent) -> None:
            try:
                fn(event)
            except Exception:
                self.errors += 1
                log.exception("%s could not show %r", type(self).__name__, event)

        return listener


def _close_tree(widget: Any) -> None:
    """Close ``widget`` and the widgets it holds: its children, and its layout and style,
    which are widgets of their own (ipywidgets keeps every open widget, and closing a widget
    closes none of these)."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if isinstance(part, widgets.Widget):
            part.close()
    widget.close()


def _replace_children(box: Any, children: tuple[Any, ...]) -> None:
    """Show ``children`` in ``box`` and close the widgets it held that are not among them, so a
    view redrawn for hours does not keep every row it ever drew open in the kernel."""
    kept = {id(child) for child in children}
    old = box.children
    box.children = children
    for child in old:
        if id(child) not in kept:
            _close_tree(child)


# ====================================================================== one lookup

class LookupView(_View):
    """One lookup, round by round, live.

    It shows the first lookup that starts on ``source`` after it is attached and matches
    ``target`` and ``kind`` when given (one of :data:`LOOKUP_KINDS`: ``"node"``, ``"value"``
    for a get, ``"search"``...); with ``once=False`` each new matching lookup replaces the one
    shown. :meth:`attach` follows another source; :meth:`detach` stops following; :meth:`close`
    (or closing ``view.widget``) stops following for good.

    Refused before anything is made, so that a view never waits for a lookup that cannot come:
    a ``source`` that is neither a Peer nor a Node (InvalidType) or a Peer that is not running
    (PeerClosedError: not started, or closed); a ``target`` that is not an id, an int in
    [0, 2**256) (InvalidType, InvalidArgument); a ``kind`` that is not one of
    :data:`LOOKUP_KINDS` (InvalidType, InvalidArgument); a ``chart_size`` (the chart's width in
    pixels) that is not an integer of at least :data:`MIN_CHART_SIZE` (InvalidType,
    InvalidArgument).
    """

    def __init__(self, source: EventSource | None = None, *, target: int | None = None,
                 kind: str | None = None, once: bool = True, chart_size: int = 320) -> None:
        self.chart_size = _count("chart_size", chart_size, MIN_CHART_SIZE)
        if source is not None:
            _check_source(source)
        self.want_target = None if target is None else check_id(target, "target")
        self.want_kind = None if kind is None else _check_kind(kind)
        self.once = once
        self._reset()
        self._header = widgets.HTML()
        self._chart = widgets.HTML()
        self._rows = widgets.VBox()
        self.row_widgets: dict[int, Any] = {}
        self.widget = widgets.VBox([self._header, widgets.HTML(LEGEND), self._chart,
                                    self._rows])
        self._close_with_widget()
        self._render_all()
        if source is not None:
            self.attach(source)

    def _reset(self) -> None:
        self.lookup_id: int | None = None
        self.target: int | None = None
        self.kind: str | None = None
        self.initial: tuple[Contact, ...] = ()
        self.rounds: dict[int, list[AskedPeer]] = {}
        self.peers: dict[int, AskedPeer] = {}
        self.finished: LookupFinished | None = None
        self.started_at = 0.0
        self.now = 0.0

    # ------------------------------------------------------------------ following

    def attach(self, source: EventSource) -> LookupView:
        """Follow the lookups of ``source`` (a running Peer or a Node) instead of any earlier
        one. RuntimeError once the view is closed; InvalidType or PeerClosedError for a source
        it cannot follow, as in the constructor (the earlier one is then still followed)."""
        self._follow(source, self.on_event)
        return self

    @property
    def following(self) -> bool:
        return self._unsubscribe is not None

    def on_event(self, event: LookupEvent) -> None:
        """Take one lookup event (the listener :meth:`attach` installs)."""
        if isinstance(event, LookupStarted):
            if self.lookup_id is not None and self.once:
                return
            if self.want_target is not None and event.target != self.want_target:
                return
            if self.want_kind is not None and event.kind != self.want_kind:
                return
            self._start(event)
            return
        if event.lookup_id != self.lookup_id or self.finished is not None:
            return
        self.now = event.now
        changed_round: int | None = None
        if isinstance(event, LookupRequest):
            asked = AskedPeer(event.contact, event.distance, event.round)
            self.peers[event.contact.id] = asked
            row = self.rounds.setdefault(event.round, [])
            row.append(asked)
            row.sort(key=lambda p: p.distance)
            changed_round = event.round
        elif isinstance(event, (LookupReply, LookupTimeout)):
            asked_peer = self.peers.get(event.contact.id)
            if asked_peer is None:
                return
            if isinstance(event, LookupReply):
                asked_peer.state = VALUE if event.found_value else ANSWERED
                asked_peer.named = len(event.closer)
            else:
                asked_peer.state = FAILED if event.final else STALLED
            changed_round = asked_peer.round
        elif isinstance(event, LookupFinished):
            self.finished = event
            if self.once:
                self.detach()
        if changed_round is not None:
            self._render_row(changed_round)
        self._render_header()
        self._render_chart()

    def _start(self, event: LookupStarted) -> None:
        self._reset()
        self.lookup_id = event.lookup_id
        self.target = event.target
        self.kind = event.kind
        self.initial = event.initial
        self.started_at = self.now = event.now
        self._clear_rows()

    def _clear(self) -> None:
        """Show no lookup, and wait for the next one that matches."""
        self._reset()
        self._clear_rows()

    def _clear_rows(self) -> None:
        self.row_widgets = {}
        _replace_children(self._rows, ())
        self._render_all()

    # ------------------------------------------------------------------ what is shown

    def shown(self) -> dict[int, list[int]]:
        """Round -> ids of the peers shown in that round, closest to the target first."""
        return {r: [p.contact.id for p in self.rounds[r]] for r in sorted(self.rounds)}

    def best_bits(self) -> dict[int, int]:
        """Round -> the most leading bits any peer asked in that round shares with the target."""
        return {r: max(p.bits for p in self.rounds[r]) for r in sorted(self.rounds)}

    @property
    def status(self) -> str:
        if self.lookup_id is None:
            return "waiting for a lookup"
        if self.finished is None:
            return "running"
        if self.finished.given_up:
            return "given up"
        if self.finished.requests == 0:  # it knew no peer to ask (NoPeersError): nothing converged
            return "no peer asked"
        return "found the value" if self.finished.found_value else "converged"

    # ------------------------------------------------------------------ rendering

    def _render_all(self) -> None:
        self._render_header()
        self._render_chart()
        for r in sorted(self.rounds):
            self._render_row(r)

    def _render_header(self) -> None:
        if self.target is None:
            self._header.value = "<b>lookup</b>: waiting for a lookup to start"
            return
        answered = sum(p.state in (ANSWERED, VALUE) for p in self.peers.values())
        failed = sum(p.state == FAILED for p in self.peers.values())
        elapsed = (self.finished.duration if self.finished is not None
                   else self.now - self.started_at)
        self._header.value = (
            f"<b>{html.escape(self.kind or '')} lookup #{self.lookup_id}</b> for "
            f"<code title='{self.target:064x}'>{short(self.target)}…</code>: "
            f"{html.escape(self.status)} · {len(self.rounds)} rounds · {len(self.peers)} asked · "
            f"{answered} answered · {failed} failed · {elapsed * 1000:.0f} ms")

    def _render_row(self, round_: int) -> None:
        tiles = "".join(_tile(p) for p in self.rounds.get(round_, []))
        value = (f"<div style='display:flex;flex-wrap:wrap;align-items:center;gap:3px'>"
                 f"<b style='width:5.5em'>round {round_}</b>{tiles}</div>")
        row = self.row_widgets.get(round_)
        if row is None:
            row = widgets.HTML(value=value)
            self.row_widgets[round_] = row
            self._rows.children = tuple(self.row_widgets[r] for r in sorted(self.row_widgets))
        else:
            row.value = value

    def _render_chart(self) -> None:
        """Leading bits shared with the target (y) by round (x): one dot per peer asked."""
        if not self.rounds:
            self._chart.value = ""
            return
        width, height, pad = self.chart_size, self.chart_size * 5 // 8, 28
        rounds = max(self.rounds)
        top = max(max(p.bits for p in self.peers.values()), 1)

        def x(r: int) -> float:
            return pad + (width - 2 * pad) * (r - 0.5) / rounds

        def y(bits: int) -> float:
            return height - pad - (height - 2 * pad) * bits / top

        parts = [f"<svg width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg' "
                 "style='font:10px sans-serif'>",
                 f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' "
                 "stroke='#999'/>",
                 f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{height - pad}' stroke='#999'/>",
                 f"<text x='{pad}' y='{pad - 8}'>bits shared with the target (max {top})</text>",
                 f"<text x='{width - pad}' y='{height - 6}' text-anchor='end'>round</text>"]
        best = self.best_bits()
        points = " ".join(f"{x(r):.1f},{y(b):.1f}" for r, b in best.items())
        parts.append(f"<polyline points='{points}' fill='none' stroke='#0275d8' "
                     "stroke-width='1.5'/>")
        for r, row in self.rounds.items():
            parts.append(f"<text x='{x(r):.1f}' y='{height - pad + 12}' "
                         f"text-anchor='middle'>{r}</text>")
            for i, p in enumerate(row):
                jitter = (i % 5 - 2) * 3
                parts.append(f"<circle cx='{x(r) + jitter:.1f}' cy='{y(p.bits):.1f}' r='3.5' "
                             f"fill='{COLOURS[p.state]}'><title>{short(p.contact.id)} "
                             f"{p.bits} bits, {p.state}</title></circle>")
        parts.append("</svg>")
        self._chart.value = "".join(parts)


def _tile(p: AskedPeer) -> str:
    named = f", named {p.named} new" if p.state in (ANSWERED, VALUE) else ""
    return (f"<span title='{p.contact.id:064x} at {html.escape(str(p.contact.address[0]))}:"
            f"{p.contact.address[1]}: {p.state}{named}' style='background:{COLOURS[p.state]};"
            "color:white;border-radius:4px;padding:1px 5px;font:11px monospace'>"
            f"{short(p.contact.id)}<sub>{p.bits}</sub></span>")


# ====================================================================== a routing table

@dataclass(frozen=True)
class BucketRow:
    """What the routing-table view shows for one bucket."""

    prefix: str  # the bits every id in the bucket starts with ("" for the whole space)
    size: int
    capacity: int
    ids: tuple[int, ...]  # least recently seen first
    replacements: int
    own: bool  # the bucket holding our own id's range


class RoutingTableView(_View):
    """How full each k-bucket of ``source``'s routing table is, and who is in it.

    With ``live`` (the default) it re-reads the table on each lookup event of ``source`` (tables
    change as lookups meet peers) until :meth:`detach` or :meth:`close` (or closing
    ``view.widget``); :meth:`refresh` re-reads it at any time.

    A bucket's prefix is shown up to ``max_prefix_bits`` bits (then "…"), an integer of at
    least 1 (InvalidType, InvalidArgument otherwise, before anything is made). ``source`` is a
    running Peer or a Node: InvalidType for anything else, PeerClosedError for a Peer that is
    not running (not started, or closed), before anything is made.
    """

    def __init__(self, source: Any, *, live: bool = True, max_prefix_bits: int = 24) -> None:
        self.max_prefix_bits = _count("max_prefix_bits", max_prefix_bits, 1)
        self.node = _node_of(source)
        self.rows: list[BucketRow] = []
        self._signature: tuple[Any, ...] | None = None
        self._summary = widgets.HTML()
        self._table = widgets.VBox()
        self.widget = widgets.VBox([self._summary, self._table])
        self._close_with_widget()
        self.refresh()
        if live:
            self._follow(self.node, lambda event: self.refresh())

    def shown(self) -> list[BucketRow]:
        return list(self.rows)

    def refresh(self) -> None:
        """Re-read the table; re-render only if something changed."""
        table = self.node.table
        signature = tuple((b.lo, tuple(b.contacts), len(b.replacements)) for b in table.buckets)
        if signature == self._signature:
            return
        self._signature = signature
        self.rows = [BucketRow(_prefix(b.lo, b.depth), len(b), table.k,
                               tuple(b.contacts), len(b.replacements), b.covers(table.own_id))
                     for b in table.buckets]
        self._summary.value = (
            f"<b>routing table of {short(self.node.id)}…</b>: {len(table)} contacts in "
            f"{len(table.buckets)} buckets (k = {table.k})")
        _replace_children(self._table, tuple(self._row_widget(row) for row in self.rows))

    def _row_widget(self, row: BucketRow) -> Any:
        bits = row.prefix if len(row.prefix) <= self.max_prefix_bits else (
            row.prefix[:self.max_prefix_bits] + "…")
        label = widgets.HTML(
            f"<code title='ids starting with {row.prefix or '(any)'}'>{bits or '(all)'}*</code>"
            + (" ★" if row.own else ""), layout=widgets.Layout(width="16em"))
        bar = widgets.IntProgress(value=row.size, min=0, max=row.capacity,
                                  description=f"{row.size}/{row.capacity}",
                                  layout=widgets.Layout(width="14em"))
        names = " ".join(f"<code title='{i:064x}'>{short(i)}</code>" for i in row.ids)
        extra = f" <i>+{row.replacements} waiting</i>" if row.replacements else ""
        return widgets.HBox([label, bar, widgets.HTML(names + extra)])


def _prefix(lo: int, depth: int) -> str:
    """The ``depth`` leading bits of ``lo``, as a bit string."""
    if depth <= 0:
        return ""
    return format(lo >> (ID_BITS - depth), f"0{depth}b")


# ====================================================================== a network

@dataclass(frozen=True)
class Member:
    id: int
    address: Any
    up: bool


class NetworkView(_View):
    """Every node of ``network`` on the id ring (angle = id / 2**256), with one lookup drawn.

    ``network`` is a :class:`~qadom.sim.SimNetwork` or an iterable of Peers (those not running
    are drawn as down). After :meth:`watch` (a Peer or Node of that network) the lookups it runs
    are drawn as they go: the target (red mark), the peers asked (coloured as in
    :class:`LookupView`) and an edge from each peer to the peers it named that were then asked.
    :meth:`refresh` re-reads who is up (the dots and the counts of nodes up and down); the
    summary line's virtual time and datagram counts (of a SimNetwork) are re-read whenever the
    ring is redrawn, so they stay in step with the lookup drawn. :meth:`detach` stops drawing,
    :meth:`close` (or closing ``view.widget``) for good.

    ``size`` is the ring's width and height in pixels, an integer of at least
    :data:`MIN_RING_SIZE` (InvalidType, InvalidArgument otherwise). These are refused too,
    before anything is made: a ``network`` that is neither (InvalidType), a ``watch`` or a
    ``target`` that :class:`LookupView` would refuse as ``source`` or ``target``.
    """

    def __init__(self, network: Any, *, watch: EventSource | None = None, target: int | None = None,
                 size: int = 420) -> None:
        self.size = _count("size", size, MIN_RING_SIZE)
        self.network = _check_network(network)
        if watch is not None:
            _check_source(watch)
        self.members: list[Member] = []
        self.lookup = LookupView(target=target, once=False)
        self.named_by: dict[int, int] = {}  # asked peer id -> id of the peer that named it
        self.origin: int | None = None
        self._base = ""
        self._members_line = ""
        self._summary = widgets.HTML()
        self._ring = widgets.HTML()
        self.widget = widgets.VBox([self._summary, widgets.HTML(
            LEGEND + " <small>black dot: the lookup's origin; red mark: its target</small>"),
            self._ring])
        self._close_with_widget()
        self.refresh()
        if watch is not None:
            self.watch(watch)

    # ------------------------------------------------------------------ following

    def watch(self, source: EventSource) -> NetworkView:
        """Draw the lookups ``source`` runs (each new one replaces the last), from the next one
        it starts: the lookup drawn until then, an earlier source's, is cleared (lookup ids are
        counted per node, so one of its lookups could not be told from one of ``source``'s).
        RuntimeError once the view is closed; InvalidType or PeerClosedError for a source it
        cannot follow, as :meth:`LookupView.attach` (the earlier one is then still followed)."""
        self._follow(source, self._on_event)
        self.origin = getattr(source, "id", None)
        self.lookup._clear()
        self.named_by = {}
        self._render_ring()
        return self

    def close(self) -> None:
        """As for every view (:meth:`_View.close`), the lookup it draws included."""
        super().close()
        self.lookup.close()  # the lookup it draws (never attached itself): its widgets

    def _on_event(self, event: LookupEvent) -> None:
        before = self.lookup.lookup_id
        self.lookup.on_event(event)
        if self.lookup.lookup_id != before:
            self.named_by = {}
        if event.lookup_id != self.lookup.lookup_id:
            return
        if isinstance(event, LookupReply):
            for contact in event.closer:
                self.named_by.setdefault(contact.id, event.contact.id)
        self._render_ring()

    # ------------------------------------------------------------------ what is shown

    @property
    def asked(self) -> dict[int, str]:
        """Id -> state of each peer the drawn lookup asked."""
        return {i: p.state for i, p in self.lookup.peers.items()}

    @property
    def edges(self) -> list[tuple[int, int]]:
        """(from, to) edges drawn: who named each asked peer (the origin for the first round)."""
        drawn = []
        for peer_id in self.lookup.peers:
            source = self.named_by.get(peer_id, self.origin)
            if source is not None:
                drawn.append((source, peer_id))
        return drawn

    def refresh(self) -> None:
        """Re-read the network's members and who is up."""
        self.members = list(_members(self.network))
        self._base = self._dots([m for m in self.members if m.up], "#5fa8d3") + self._dots(
            [m for m in self.members if not m.up], "#ccc")
        up = sum(m.up for m in self.members)
        self._members_line = (f"<b>network</b>: {len(self.members)} nodes, {up} up, "
                              f"{len(self.members) - up} down")
        self._render_ring()

    # ------------------------------------------------------------------ rendering

    def _render_summary(self) -> None:
        """The members as last read, and the simulator's clock and counters as they are now:
        a few attributes, cheap enough to re-read at every lookup event."""
        stats = ""
        if hasattr(self.network, "delivered"):
            stats = (f" · virtual time {self.network.now:.1f} s · "
                     f"{self.network.delivered} datagrams delivered, "
                     f"{self.network.dropped} dropped")
        self._summary.value = self._members_line + stats

    def _xy(self, node_id: int, shrink: float = 0.0) -> tuple[float, float]:
        angle = 2 * math.pi * (node_id / ID_SPACE)
        radius = self.size / 2 - 20 - shrink
        return (self.size / 2 + radius * math.sin(angle), self.size / 2 - radius * math.cos(angle))

    def _dots(self, members: list[Member], colour: str) -> str:
        """One SVG path drawing a round dot per member: a few bytes per node, so that a ring of
        thousands of nodes can be redrawn at every lookup event."""
        if not members:
            return ""
        moves = "".join("M{:.1f},{:.1f}h0".format(*self._xy(m.id)) for m in members)
        return (f"<path d='{moves}' stroke='{colour}' stroke-width='4' "
                "stroke-linecap='round'/>")

    def _render_ring(self) -> None:
        s = self.size
        parts = [f"<svg width='{s}' height='{s}' xmlns='http://www.w3.org/2000/svg' "
                 "style='font:10px sans-serif'>",
                 f"<circle cx='{s / 2}' cy='{s / 2}' r='{s / 2 - 20}' fill='none' stroke='#ddd'/>",
                 self._base]
        lookup = self.lookup
        if lookup.target is not None:
            for a, b in self.edges:
                (x1, y1), (x2, y2) = self._xy(a), self._xy(b)
                parts.append(f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' "
                             "stroke='#999' stroke-width='0.6' stroke-opacity='0.7'/>")
            for peer in lookup.peers.values():
                x, y = self._xy(peer.contact.id)
                parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='4.5' "
                             f"fill='{COLOURS[peer.state]}'><title>{short(peer.contact.id)}: "
                             f"round {peer.round}, {peer.state}</title></circle>")
            if self.origin is not None:
                x, y = self._xy(self.origin)
                parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='6' fill='black'>"
                             f"<title>origin {short(self.origin)}</title></circle>")
            x1, y1 = self._xy(lookup.target, -8)
            x2, y2 = self._xy(lookup.target, 8)
            parts.append(f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' "
                         f"stroke='red' stroke-width='3'><title>target {short(lookup.target)}"
                         "</title></line>")
            parts.append(f"<text x='{s / 2}' y='{s / 2}' text-anchor='middle'>"
                         f"{html.escape(lookup.status)}, {len(lookup.rounds)} rounds, "
                         f"{len(lookup.peers)} asked</text>")
        parts.append("</svg>")
        self._ring.value = "".join(parts)
        self._render_summary()


def _check_network(network: Any) -> Any:
    """``network`` if a NetworkView can draw it: a SimNetwork (anything with a ``nodes`` dict),
    or an iterable of Peers (a one-shot iterator is read into a tuple, to be read again at each
    :meth:`NetworkView.refresh`). InvalidType otherwise."""
    if isinstance(getattr(network, "nodes", None), dict):
        return network
    if isinstance(network, (str, bytes)) or not isinstance(network, Iterable):
        raise InvalidType(f"a NetworkView draws a SimNetwork or an iterable of Peers, not "
                          f"{type(network).__name__}")
    if isinstance(network, Iterator):
        network = tuple(network)
    for member in network:
        if not isinstance(member, Peer):
            raise InvalidType(f"a NetworkView draws a SimNetwork or an iterable of Peers, not "
                              f"an iterable holding {type(member).__name__}")
    return network


def _members(network: Any) -> Iterable[Member]:
    nodes = getattr(network, "nodes", None)
    if isinstance(nodes, dict):  # a SimNetwork: address -> Node, plus the set of addresses down
        down: set[Any] = getattr(network, "down", set())
        for address, node in nodes.items():
            yield Member(node.id, address, address not in down)
        return
    for peer in network:
        yield Member(peer.id, peer.address if peer.running else None, bool(peer.running))


# ====================================================================== watching the simulator

async def play(network: Any, call: Call[T], *, watch: EventSource, delay: float = 0.05,
               timeout: float | None = None, max_events: int = 1_000_000) -> T:
    """Run a simulated ``call`` (from ``network.call``) event by event, sleeping ``delay`` real
    seconds after each event that made ``watch`` emit a lookup event, so views attached to it
    can be watched as they update. Returns the call's result (or raises its exception); raises
    TimeoutError past ``timeout`` virtual seconds (twice the operation timeout by default) or
    ``max_events`` events.

    Refused before any event runs: a ``call`` that is not a :class:`~qadom.call.Call`
    (InvalidType), or one that another network started (InvalidArgument, as
    :meth:`~qadom.sim.SimNetwork.run_call` refuses it: events here would never complete it); a
    ``delay`` or ``timeout`` that is not a finite number of seconds, at least 0, or a
    ``max_events`` that is not an integer of at least 1 (InvalidType for a wrong type,
    InvalidArgument for a value out of range)."""
    if not isinstance(call, Call):
        raise InvalidType(f"play needs a Call (as network.call() returns), not "
                          f"{type(call).__name__}")
    network.check_ours(call)  # another network's call would only wait here until it timed out
    delay = _seconds("delay", delay)
    if timeout is not None:
        timeout = _seconds("timeout", timeout)
    max_events = _count("max_events", max_events, 1)
    fired = [False]

    def mark(event: LookupEvent) -> None:
        fired[0] = True

    limit = network.now + (timeout if timeout is not None
                           else network.config.operation_timeout * 2)
    unsubscribe = watch.add_listener(mark)
    try:
        for _ in range(max_events):
            if call.done:
                return call.result()
            if not network.step() or network.now > limit:
                break
            if fired[0]:
                fired[0] = False
                await asyncio.sleep(delay)
        if call.done:
            return call.result()
        raise TimeoutError(f"{call!r} did not complete in the simulation")
    finally:
        unsubscribe()
