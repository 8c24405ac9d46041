"""The widgets at their edges: the network view's summary kept in step with its ring, ``play``
and the views refusing what they cannot use, and the notebooks at the smallest sizes.

The views are driven by real lookups on small seeded simulated networks (virtual time); the
notebooks run in a real Jupyter kernel, as in tests/test_notebooks.py.
"""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from ipywidgets.widgets.widget import _instances  # every open widget, by id
from nbclient import NotebookClient

from qadom import Config, widgets
from qadom.errors import InvalidArgument, InvalidType
from qadom.events import LookupEvent
from qadom.sim import SimNetwork
from qadom.widgets import LookupView, NetworkView, RoutingTableView, play

from helpers import KERNEL, kernel_environment

SMALL = Config(k=4, alpha=2, replacement_cache_size=4)
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TARGET = 0x5EED << 200


def _text(markup: str) -> str:
    return re.sub("<[^>]+>", "", markup)


def _counters(net: SimNetwork) -> str:
    """What the summary line says of the simulator now."""
    return (f"virtual time {net.now:.1f} s · {net.delivered} datagrams delivered, "
            f"{net.dropped} dropped")


# ====================================================================== the network view

def test_network_view_summary_keeps_up_with_the_ring() -> None:
    net = SimNetwork(7, config=SMALL, loss=0.2)
    nodes = net.build(60)
    origin = nodes[0]
    view = NetworkView(net, watch=origin)
    assert _counters(net) in _text(view._summary.value)  # virtual time 0.0 s · 0 ...

    seen: list[tuple[str, str, str]] = []

    def check(event: LookupEvent) -> None:  # added after the view's: called after it drew
        seen.append((_text(view._ring.value), _text(view._summary.value), _counters(net)))

    unsubscribe = origin.add_listener(check)
    try:
        net.run_call(net.call(origin, origin.find_nodes, TARGET))
    finally:
        unsubscribe()
    assert net.delivered > 0 and net.dropped > 0 and net.now > 0
    assert len(seen) > 10
    for ring, summary, counters in seen:  # at every lookup event, drawn with the ring
        assert counters in summary, (ring, summary)
    assert "converged" in seen[-1][0]
    assert _counters(net) in _text(view._summary.value)
    assert "60 nodes, 60 up, 0 down" in _text(view._summary.value)
    view.close()


# ====================================================================== play refuses

@pytest.mark.parametrize("delay", [math.nan, math.inf, -0.5])
async def test_play_refuses_a_delay_out_of_range(delay: float) -> None:
    net = SimNetwork(2, config=SMALL)
    origin = net.build(20)[0]
    call = net.call(origin, origin.find_nodes, TARGET)
    before = (net.now, net.delivered)
    with pytest.raises(InvalidArgument, match="delay"):
        await asyncio.wait_for(play(net, call, watch=origin, delay=delay), 10)
    assert (net.now, net.delivered) == before and not call.done  # no event ran


@pytest.mark.parametrize(("arguments", "error"), [
    ({"delay": "0.1"}, InvalidType),
    ({"delay": True}, InvalidType),
    ({"timeout": math.nan}, InvalidArgument),
    ({"timeout": -1.0}, InvalidArgument),
    ({"max_events": 0}, InvalidArgument),
    ({"max_events": 2.5}, InvalidType),
])
async def test_play_refuses_other_arguments_out_of_range(arguments: dict[str, Any],
                                                         error: type[Exception]) -> None:
    net = SimNetwork(2, config=SMALL)
    origin = net.build(20)[0]
    call = net.call(origin, origin.find_nodes, TARGET)
    with pytest.raises(error):
        await asyncio.wait_for(play(net, call, watch=origin, **arguments), 10)
    assert net.now == 0.0 and not call.done
    # The same call, with arguments in range, runs to its end.
    assert await asyncio.wait_for(play(net, call, watch=origin, delay=0), 10)


async def test_play_refuses_a_call_started_on_another_network_at_once() -> None:
    ours, theirs = SimNetwork(2, config=SMALL), SimNetwork(3, config=SMALL)
    origin, stranger = ours.build(20)[0], theirs.build(20)[0]
    call = theirs.call(stranger, stranger.find_nodes, TARGET)
    with pytest.raises(InvalidArgument, match="another network") as refused:
        await asyncio.wait_for(play(ours, call, watch=origin, delay=0), 10)
    with pytest.raises(InvalidArgument) as by_run_call:  # the same refusal as run_call's
        ours.run_call(call)
    assert str(refused.value) == str(by_run_call.value)
    assert ours.now == 0.0 and not call.done  # refused before any virtual time was spent
    with pytest.raises(InvalidType):
        await asyncio.wait_for(play(ours, "not a call", watch=origin, delay=0), 10)  # type: ignore[arg-type]
    # Where it was started, it runs.
    assert await asyncio.wait_for(play(theirs, call, watch=stranger, delay=0), 10)


# ====================================================================== view sizes

@pytest.mark.parametrize(("view", "argument", "value", "error"), [
    (LookupView, "chart_size", -320, InvalidArgument),
    (LookupView, "chart_size", 0, InvalidArgument),
    (LookupView, "chart_size", 50, InvalidArgument),  # less than the chart's margins
    (LookupView, "chart_size", 320.0, InvalidType),
    (LookupView, "chart_size", True, InvalidType),
    (NetworkView, "size", -420, InvalidArgument),
    (NetworkView, "size", 50, InvalidArgument),  # less than the ring's margins
    (NetworkView, "size", "420", InvalidType),
    (RoutingTableView, "max_prefix_bits", -1, InvalidArgument),
    (RoutingTableView, "max_prefix_bits", 0, InvalidArgument),
    (RoutingTableView, "max_prefix_bits", None, InvalidType),
])
def test_views_refuse_sizes_out_of_range(view: type[Any], argument: str, value: Any,
                                         error: type[Exception]) -> None:
    net = SimNetwork(2, config=SMALL)
    node = net.build(20)[0]
    arguments: dict[str, Any] = {argument: value}
    if view is NetworkView:
        arguments["watch"] = node
    open_widgets = len(_instances)
    with pytest.raises(error, match=argument):
        view(net if view is NetworkView else node, **arguments)
    assert len(_instances) == open_widgets  # refused before any widget was made


def test_views_at_their_smallest_sizes_draw_inside_themselves() -> None:
    net = SimNetwork(2, config=SMALL)
    nodes = net.build(120)
    origin = nodes[0]
    smallest_chart, smallest_ring = widgets.MIN_CHART_SIZE, widgets.MIN_RING_SIZE
    with pytest.raises(InvalidArgument):
        LookupView(origin, chart_size=smallest_chart - 1)
    with pytest.raises(InvalidArgument):
        NetworkView(net, size=smallest_ring - 1)
    lookup = LookupView(origin, target=TARGET, chart_size=smallest_chart)
    ring = NetworkView(net, watch=origin, size=smallest_ring)
    table = RoutingTableView(origin, max_prefix_bits=1)
    net.run_call(net.call(origin, origin.find_nodes, TARGET))
    assert lookup.finished is not None and len(lookup.rounds) > 1
    numbers = [float(n) for n in re.findall(r"(?:width|height|x\d?|y\d?|cx|cy)='(-?[\d.]+)'",
                                            lookup._chart.value + ring._ring.value)]
    assert numbers and min(numbers) >= 0
    assert max(numbers) <= max(smallest_chart, smallest_ring)
    rows = table.shown()
    assert len(rows) > 1 and any(len(row.prefix) > 1 for row in rows)
    for row, drawn in zip(rows, table._table.children, strict=True):
        label = _text(drawn.children[0].value)  # one bit of the prefix at most, then "…"
        assert label.startswith((row.prefix[:1] + "…" if len(row.prefix) > 1
                                 else row.prefix or "(all)") + "*"), (row, label)
    for view in (lookup, ring, table):
        view.close()


# ====================================================================== the notebooks, small

def _parameters(name: str) -> str:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)  # type: ignore[no-untyped-call]
    (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    return str(cell.source)


@pytest.mark.parametrize(("name", "environment", "names"), [
    ("1-tour.ipynb", {"QADOM_NB_PEERS": "1"}, "QADOM_NB_PEERS"),
    ("1-tour.ipynb", {"QADOM_NB_PEERS": "0"}, "QADOM_NB_PEERS"),
    ("2-lookups-at-scale.ipynb", {"QADOM_NB_NODES": "1"}, "QADOM_NB_NODES"),
    ("2-lookups-at-scale.ipynb", {"QADOM_NB_LOOKUPS": "0"}, "QADOM_NB_LOOKUPS"),
    ("3-churn.ipynb", {"QADOM_NB_NODES": "0"}, "QADOM_NB_NODES"),
    ("3-churn.ipynb", {"QADOM_NB_VALUES": "0"}, "QADOM_NB_VALUES"),
])
def test_notebook_refuses_sizes_too_small_in_its_parameters_cell(
        name: str, environment: dict[str, str], names: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=names) as refused:
        exec(_parameters(name), {})
    assert "\n" not in str(refused.value)  # one line, naming what to change


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A kernelspec for this interpreter in a temporary directory (nothing is installed)."""
    return {**kernel_environment(tmp_path_factory.mktemp("jupyter")), "QADOM_NB_DELAY": "0"}


@pytest.mark.parametrize(("name", "environment", "expected"), [
    # the smallest sizes each notebook takes
    ("1-tour.ipynb", {"QADOM_NB_PEERS": "2"}, ["b'hello, bob'", "converged"]),
    ("2-lookups-at-scale.ipynb", {"QADOM_NB_NODES": "2", "QADOM_NB_LOOKUPS": "1"},
     ["2 nodes", "1 lookups", "converged in 1 rounds", "[(2, "]),
    # fewer nodes than k: every survivor holds every value, and a few nodes leave
    ("3-churn.ipynb", {"QADOM_NB_NODES": "3", "QADOM_NB_VALUES": "2"},
     ["2 values stored", "1 nodes left", "later: 2/2 values found", "no lookup",
      "an hour later: replicas per value: median 2.0 - fewest 2"]),
])
def test_notebook_runs_at_its_smallest_size(name: str, environment: dict[str, str],
                                            expected: list[str], kernel_env: dict[str, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**kernel_env, **environment}.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)  # type: ignore[no-untyped-call]
    client = NotebookClient(notebook, kernel_name=KERNEL, timeout=60, startup_timeout=60,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError if a cell fails
    text = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
            text += [output.get("text", ""), output.get("data", {}).get("text/plain", "")]
    joined = "\n".join(text)
    for wanted in expected:
        assert wanted in joined, (name, wanted)
