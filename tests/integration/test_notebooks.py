"""notebooks/quickstart.ipynb runs top to bottom on its tiny setting, executed with nbclient as a reader would run it.

The kernel is this test's interpreter: a kernelspec written into a temporary JUPYTER_PATH entry runs `sys.executable`,
so the notebook sees the same vidgen and packages as the tests, whatever kernels the machine has installed.
"""

import json
import os
import sys

import imageio.v3 as iio
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
QUICKSTART = os.path.join(NOTEBOOKS, "quickstart.ipynb")
KERNEL = "vidgen-tests"


@pytest.fixture
def kernel(tmp_path, monkeypatch):
  """The name of a kernelspec that starts this interpreter, on CPU."""
  spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "vidgen tests", "language": "python",
          "env": {"JAX_PLATFORMS": "cpu"}}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(tmp_path / "jupyter"),
                                                                    os.environ.get("JUPYTER_PATH")])))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  return KERNEL


def parameterized(nb: nbformat.NotebookNode, **parameters) -> nbformat.NotebookNode:
  """The notebook with a cell setting `parameters` after its `parameters` cell (papermill's convention)."""
  index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
  cells = list(nb.cells)
  cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
  nb.cells = cells
  return nb


def execute(nb: nbformat.NotebookNode, kernel: str, cwd: str) -> nbformat.NotebookNode:
  """Runs every cell in a fresh kernel started in `cwd`; a cell that raises fails the test with its traceback."""
  NotebookClient(nb, timeout=300, kernel_name=kernel, resources={"metadata": {"path": cwd}}).execute()
  return nb


def outputs(nb: nbformat.NotebookNode, cell_id: str) -> tuple[str, set[str]]:
  """(printed text, MIME types of displayed data) of the cell with id `cell_id`."""
  cell = next(c for c in nb.cells if c.get("id") == cell_id)
  text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
  mimes = {m for o in cell.outputs if o.output_type in ("display_data", "execute_result") for m in o.data}
  return text, mimes


def test_quickstart_is_stored_clean():
  nb = nbformat.read(QUICKSTART, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code), "store the notebook without outputs"
  params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1 and "TINY = True" in params[0].source


def test_quickstart_runs_on_the_tiny_setting(kernel, tmp_path):
  before = sorted(os.listdir(NOTEBOOKS))
  workdir = str(tmp_path / "run")
  nb = execute(parameterized(nbformat.read(QUICKSTART, as_version=4), TINY=True, WORKDIR=workdir), kernel,
               NOTEBOOKS)

  text, _ = outputs(nb, "setup")
  assert f"repository: {ROOT}" in text and workdir in text
  text, mimes = outputs(nb, "data")
  assert "image/gif" in mimes and "held out of training" in text
  text, _ = outputs(nb, "loss")
  assert "DiT loss" in text or "mean loss" in text

  # The sample cell: a seen and a held-out prompt, generated and shown as one gif.
  text, mimes = outputs(nb, "sample")
  assert "'a red square moving down': held out" in text and "'a red circle moving right': seen" in text
  assert "videos: (2, 5, 32, 32, 3) uint8" in text
  assert "image/gif" in mimes
  frames = iio.imread(os.path.join(workdir, "notebook", "samples.gif"), index=None)
  assert frames.shape[0] == 5 and frames.shape[1] >= 128

  # The eval table of the eval.json that the run wrote.
  text, _ = outputs(nb, "eval")
  assert "| seen | 2 |" in text and "| held-out | 7 |" in text and "VAE reconstruction PSNR" in text

  for path in ("eval.json", "metrics.jsonl", "checkpoints", "vae", "latents", "samples"):
    assert os.path.exists(os.path.join(workdir, path)), path
  assert sorted(os.listdir(NOTEBOOKS)) == before  # nothing written next to the notebook


def test_quickstart_finds_the_repository_from_its_root(kernel, tmp_path):
  """Started from the repository root instead of notebooks/: the setup cells find experiments/ all the same."""
  nb = nbformat.read(QUICKSTART, as_version=4)
  setup = next(i for i, c in enumerate(nb.cells) if c.get("id") == "setup")
  nb.cells = nb.cells[:setup + 1]
  nb = execute(parameterized(nb, TINY=True, WORKDIR=str(tmp_path / "run")), kernel, ROOT)
  text, _ = outputs(nb, "setup")
  assert f"repository: {ROOT}" in text


SCALING = os.path.join(NOTEBOOKS, "scaling_laws.ipynb")


def test_scaling_notebook_is_stored_executed():
  # Readers see the curves without running anything: every code cell has run, in order, and the plots are inside.
  nb = nbformat.read(SCALING, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
  assert not any(o.output_type == "error" for c in code for o in c.outputs)
  assert sum("image/png" in o.get("data", {}) for c in code for o in c.outputs) >= 4


def test_scaling_notebook_fits_the_committed_sweep(kernel):
  nb = execute(parameterized(nbformat.read(SCALING, as_version=4), NUM_BOOTSTRAP=40), kernel, NOTEBOOKS)
  text, _ = outputs(nb, "load")
  assert "18 points, 4 budgets" in text and "decades" in text
  text, mimes = outputs(nb, "frontier")
  assert "image/png" in mimes and "A C^-alpha: E = " in text and "not fitted" not in text
  text, mimes = outputs(nb, "isoflop")
  assert "image/png" in mimes and "a = " in text and "b = " in text and "not fitted" not in text
  text, _ = outputs(nb, "chinchilla")
  assert "alpha = " in text and "beta = " in text and "not fitted" not in text
  text, _ = outputs(nb, "predict")
  assert "predicting C = " in text and "predicts loss" in text
  text, mimes = outputs(nb, "compare")
  assert "image/png" in mimes and "full attention" in text and "patch 1" in text
  text, _ = outputs(nb, "objectives")
  assert "rectified flow" in text and "v-prediction" in text
