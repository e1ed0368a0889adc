"""Every notebook runs top to bottom on CPU with tiny settings."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).parent.parent / "notebooks"
TINY = {"quickstart.ipynb": 'DATASET = "digits"\nMODEL = "lenet300_100"\nEPOCHS = 3\n'
                            'BATCH_SIZE = 64\nLEARNING_RATE = 1e-3\nREPO_URL = ""\n',
        "edge_popup.ipynb": 'DATASET = "digits"\nMODEL = "lenet300_100"\nEPOCHS = 3\n'
                            'BATCH_SIZE = 64\nLEARNING_RATE = 0.1\nKEEP = 0.5\nREPO_URL = ""\n',
        "slot_machines.ipynb": 'DATASET = "digits"\nMODEL = "lenet300_100"\nEPOCHS = 3\n'
                               'BATCH_SIZE = 64\nLEARNING_RATE = 0.1\nK = 8\nREPO_URL = ""\n',
        "laperm.ipynb": 'DATASET = "digits"\nMODEL = "lenet300_100"\nEPOCHS = 3\n'
                        'BATCH_SIZE = 64\nLEARNING_RATE = 1e-3\nSYNC_PERIOD = 10\n'
                        'REPO_URL = ""\n',
        "analysis.ipynb": 'DATASET = "digits"\nMODEL = "lenet300_100"\nLAYER = "Dense_0"\n'
                          'EPOCHS = 3\nBATCH_SIZE = 64\nLEARNING_RATE = 0.05\n'
                          'PRUNE_FRACTION = 0.5\nRANDOM_ROUNDS = 2\nKS = (1, 5)\n'
                          'REPO_URL = ""\n',
        "compare.ipynb": 'DATASET = "digits"\nMODEL = "lenet300_100"\n'
                         'METHODS = ("dense", "edge_popup", "lrr")\nEPOCHS = 2\nSEEDS = 2\n'
                         'DENSITY_MULTIPLIER = 0.5\nTARGET_DENSITY = 0.3\n'
                         'import tempfile\nWORKDIR = tempfile.mkdtemp()\nREPO_URL = ""\n',
        "pruning.ipynb": 'DATASET = "digits"\nMODEL = "lenet300_100"\nEPOCHS = 2\n'
                         'ROUNDS = 2\nKEEP = 0.5\nBATCH_SIZE = 64\nLEARNING_RATE = 0.1\n'
                         'REPO_URL = ""\n'}


def test_every_notebook_has_tiny_settings():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, "one cell tagged 'parameters'"
    parameters[0].source = TINY[name]
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.outputs)
    assert "backend: CPU" in text
    assert "test accuracy" in text
    figures = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
               if "image/png" in out.get("data", {})]
    assert figures, "the curves cell draws a figure"
