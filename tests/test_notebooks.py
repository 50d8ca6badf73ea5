"""The four notebooks execute at their small settings and write the files they promise.

Each notebook runs in a fresh ``python3`` kernel (nbclient) whose working directory is a temporary
folder, with ``PYTHONPATH`` set to the repository root (genfield need not be installed) and
``GENFIELD_NOTEBOOK_OUT`` pointing into that folder. The committed notebooks must carry no outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: Seconds any one cell may run (the small settings take well under a minute per notebook).
CELL_TIMEOUT = 240

#: notebook -> files (relative to its output folder) it must write.
EXPECTED = {
    "images": [
        "faces/reconstructions.png",
        "faces_psnr_vs_steps.png",
        "psnr_vs_steps.png",
        "results.csv",
        "results.md",
    ],
    "ct": ["psnr_vs_views.png", "ct_ponp_0.png", "ct_reptile_0.png"],
    "shapes": ["ground_truth.png", "ground_truth.ply"],
    "views": ["context_views.png", "novel_views.png", "turntable_ponp.gif", "turntable_cnp.gif"],
}

nbclient = pytest.importorskip("nbclient")


def _ensure_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user"], check=True)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_committed_without_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert 'SMALL = os.environ.get("GENFIELD_NOTEBOOK_SMALL", "1") == "1"' in code[0].source


@pytest.mark.parametrize("name", list(EXPECTED))
def test_notebook_runs(name: str, tmp_path: Path) -> None:
    _ensure_kernel()
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "GENFIELD_NOTEBOOK_SMALL": "1",
        "GENFIELD_NOTEBOOK_OUT": str(tmp_path / "outputs"),
        "MPLBACKEND": "Agg",
    }
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=env)  # raises CellExecutionError on the first failing cell

    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
    shown = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "display_data" and "image/png" in output.get("data", {})
    ]
    assert shown, f"{name}: no figure was shown inline"

    out = tmp_path / "outputs" / name
    for relative in EXPECTED[name]:
        path = out / relative
        assert path.is_file() and path.stat().st_size > 0, f"{name}: {relative} was not written"
        if path.suffix in (".png", ".gif"):
            pixels = iio.imread(path, index=None)
            assert pixels.ndim >= 2 and min(pixels.shape[-3:-1] if pixels.ndim > 2 else pixels.shape) > 8
    if name == "shapes":  # each method left either a mesh and its preview, or the reason it has none
        for method in ("cnp", "reptile"):
            mesh, reason = out / f"mesh_{method}.ply", out / f"mesh_{method}.txt"
            assert (mesh.is_file() and (out / f"mesh_{method}.png").is_file()) or reason.is_file()
    if name == "views":
        frames = iio.imread(out / "turntable_ponp.gif", index=None)
        assert frames.shape[-1] in (3, 4) and frames.shape[1:3] == (24, 24)
