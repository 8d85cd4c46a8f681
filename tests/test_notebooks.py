"""The notebooks in notebooks/ run end to end (nbclient, a real kernel) and ship without outputs."""

import ast
import pathlib
import time

import nbformat
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {path.stem for path in NOTEBOOKS} >= {"quickstart", "text_to_image"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_stored_without_outputs_and_parses(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
            ast.parse(cell.source)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_end_to_end(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient  # noqa: PLC0415

    monkeypatch.setenv("NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    # One CPU device, as a notebook on a laptop has (sharded paths are tested elsewhere): about
    # a third faster here than the suite's 8 simulated devices.
    monkeypatch.setenv("XLA_FLAGS", "")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=900,  # per cell
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any failure
    print(f"{path.name} ran in {time.perf_counter() - start:.0f} s")
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    shown = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(shown) >= 3  # the loss plot and the sample grids are displayed inline
    assert (tmp_path / "run" / "checkpoints").is_dir()
