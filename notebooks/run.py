"""Re-execute the notebooks in place (their stored outputs are what a code host shows) and save the README's picture.

    uv run python notebooks/run.py                  # all three, then docs/attention-reversal.png
    uv run python notebooks/run.py probes.ipynb     # one of them

Each notebook runs top to bottom in a fresh kernel started with this very Python (the project's venv; no kernel
is registered anywhere), with the notebooks/ folder as its working directory. A failing cell stops the run with
the notebook's name and the cell's number and first line. tests/test_notebooks.py runs them the same way.
"""

import base64
import re
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from cs336_basics.fileio import atomic_write_bytes, atomic_write_text

HERE = Path(__file__).resolve().parent
NOTEBOOKS = ("tokenizer.ipynb", "model.ipynb", "probes.ipynb")
README_FIGURE = ("probes.ipynb", "readme-figure", HERE.parent / "docs" / "attention-reversal.png")


class NotebookError(RuntimeError):
    """A cell of a notebook failed; the message names the notebook and the cell."""


class _ThisPython(KernelSpecManager):
    """Every kernel name means an ipykernel on sys.executable, whatever kernels this machine has registered."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        return KernelSpec(argv=argv, display_name="Python 3 (ipykernel)", language="python")


def execute(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run the notebook at `path` in a fresh kernel and return it with its new outputs (the file is not written)."""
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=_ThisPython())
    client = NotebookClient(nb, km=km, timeout=timeout, record_timing=False, allow_errors=False)
    client.resources = {"metadata": {"path": str(path.parent)}}  # the kernel's working directory
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as error:
                    first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                    plain = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # the traceback without terminal colours
                    raise NotebookError(f"{path.name}: cell {index} ({first!r}) failed:\n{plain}") from None
    finally:
        if km.has_kernel:  # a kernel manager passed in is ours to shut down, not the client's
            km.shutdown_kernel(now=True)
    return nb


def tagged_png(nb: nbformat.NotebookNode, tag: str) -> bytes:
    """The PNG that the cell tagged `tag` displayed."""
    for cell in nb.cells:
        if tag in cell.get("metadata", {}).get("tags", []):
            for output in cell.get("outputs", []):
                if "image/png" in output.get("data", {}):
                    return base64.b64decode(output["data"]["image/png"])
    raise LookupError(f"no cell tagged {tag!r} displayed a PNG")


def main(names: list[str]) -> None:
    for name in names or NOTEBOOKS:
        path = HERE / name
        start = time.perf_counter()
        nb = execute(path)
        atomic_write_text(path, nbformat.writes(nb) + "\n")
        print(f"{name}: executed in {time.perf_counter() - start:.1f} s, written")
        notebook, tag, target = README_FIGURE
        if name == notebook:
            png = tagged_png(nb, tag)
            atomic_write_bytes(target, lambda f, png=png: f.write(png))
            print(f"  {target.relative_to(HERE.parent)}: {len(png):,} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
