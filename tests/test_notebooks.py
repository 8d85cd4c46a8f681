"""The notebooks in notebooks/ run end to end (nbclient, a real kernel) and ship without outputs."""

import ast
import pathlib
import re
import time

import nbformat
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# Train steps for the end-to-end runs, fewer than the notebooks' own (a few minutes of training on
# 2 cores): what is asserted (every cell runs, the loss plot and the sample grids are shown, the
# checkpoint is written, the sweeps compile nothing new) does not depend on how far it trains.
TRAIN_STEPS = {"quickstart": 100, "text_to_image": 100}
_TRAIN_STEPS_LINE = re.compile(r"^config\.num_train_steps = \d+$", re.MULTILINE)


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
    if path.stem in TRAIN_STEPS:
        line = f"config.num_train_steps = {TRAIN_STEPS[path.stem]}"
        cells = [cell for cell in notebook.cells if _TRAIN_STEPS_LINE.search(cell.source)]
        assert len(cells) == 1, "the notebook sets config.num_train_steps in one cell"
        cells[0].source = _TRAIN_STEPS_LINE.sub(line, cells[0].source)
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
    if path.stem in TRAIN_STEPS:  # the shorter run's last step is the one saved
        assert (tmp_path / "run" / "checkpoints" / str(TRAIN_STEPS[path.stem])).is_dir()
