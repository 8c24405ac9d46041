"""The notebooks run top to bottom in a real Jupyter kernel (nbclient), scaled down.

The kernel is this interpreter's ipykernel, described by a kernelspec written to a temporary
directory (found through JUPYTER_PATH), so nothing is installed anywhere. The sizes come in
through the environment variables each notebook's parameters cell reads.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import KERNEL, kernel_environment

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SMALL = {
    "QADOM_NB_PEERS": "4",
    "QADOM_NB_NODES": "60",
    "QADOM_NB_LOOKUPS": "20",
    "QADOM_NB_VALUES": "10",
    "QADOM_NB_DELAY": "0",
}
PLOTS = {"1-tour.ipynb": 0, "2-lookups-at-scale.ipynb": 2, "3-churn.ipynb": 2}
EXPECTED = {
    # notebook -> text its outputs must hold when run with SMALL
    "1-tour.ipynb": ["b'sudo python'", "b'at lunch'", "b'hello, bob'",
                     "['emacs', 'helix', 'nano', 'vim']", "converged"],
    "2-lookups-at-scale.ipynb": ["60 nodes", "20 lookups", "converged in"],
    "3-churn.ipynb": ["10 values stored", "20 nodes left", "right after: 10/10 values found",
                      "later: 10/10 values found", "b'value number",
                     "an hour later: replicas per value", "requests timed out per get:"],
}


VIEW = "application/vnd.jupyter.widget-view+json"


def _run_extra(client: NotebookClient, source: str) -> list[dict[str, object]]:
    """Run ``source`` in the notebook's kernel as a cell that is not kept; its outputs."""
    cell = nbformat.v4.new_code_cell(source)  # type: ignore[no-untyped-call]
    client.nb.cells.append(cell)  # execute_cell stores the cell it ran at its index
    try:
        client.execute_cell(cell, len(client.nb.cells) - 1, store_history=False)
    finally:
        client.nb.cells.pop()
    return list(cell.outputs)


def _open_views(client: NotebookClient) -> int:
    """How many qadom views in the kernel are not closed (each follows its node until then)."""
    outputs = _run_extra(client, (
        "import gc as _gc\n"
        "from qadom.widgets import LookupView as _L, NetworkView as _N, RoutingTableView as _R\n"
        "print(sum(isinstance(o, (_L, _N, _R)) and not o.closed for o in _gc.get_objects()))"))
    return int("".join(str(o.get("text", "")) for o in outputs))


def test_there_are_three_notebooks() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {**kernel_environment(tmp_path_factory.mktemp("jupyter")), **SMALL}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_top_to_bottom(name: str, kernel_env: dict[str, str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = NOTEBOOKS / name
    notebook = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    nbformat.validate(notebook)
    # Committed without outputs, and each says what it shows.
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, name
    assert "What this notebook shows" in notebook.cells[0].source
    assert any("parameters" in c.metadata.get("tags", []) for c in notebook.cells)

    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    client = NotebookClient(notebook, kernel_name=KERNEL, timeout=60, startup_timeout=60,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.reset_execution_trackers()
    with client.setup_kernel():
        for index, cell in enumerate(list(notebook.cells)):
            client.execute_cell(cell, index)  # raises CellExecutionError if the cell fails
            if any(VIEW in output.get("data", {}) for output in cell.get("outputs", [])):
                # A learner runs a cell showing a view again: it still works, and closes the
                # views its first run made, which would otherwise follow their node for good.
                before = _open_views(client)
                _run_extra(client, cell.source)
                assert _open_views(client) == before, (name, index, cell.source)

    text, plots, views = [], 0, 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
            data = output.get("data", {})
            text += [output.get("text", ""), data.get("text/plain", "")]
            plots += "image/png" in data  # matplotlib figures, inline
            views += VIEW in data
    assert plots == PLOTS[name]
    assert views >= 1  # every notebook shows at least one live view
    joined = "\n".join(text)
    for expected in EXPECTED[name]:
        assert expected in joined, (name, expected)
    assert "internal error" not in joined
