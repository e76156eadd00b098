"""Execute the analysis notebooks against a results store, headless, keeping their outputs.

``python -m analysis.notebooks [RESULTS]`` (``make notebooks``) runs analysis/paper_tables.ipynb
and analysis/pareto_frontier.ipynb on RESULTS (default: the committed ``results/tiny``) and
writes them back with their outputs, so that a reader of the repository sees the tables and
figures without running anything. The tests execute them through the same :func:`execute`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("paper_tables", "pareto_frontier")


def execute(name: str, results: str | Path, *, timeout: int = 180):
    """The notebook ``analysis/<name>.ipynb`` executed on ``results`` (its ESOLM_RESULTS
    parameter), figures drawn with the Agg backend; a cell that fails raises nbclient's
    CellExecutionError naming it."""
    import nbclient
    import nbformat

    nb = nbformat.read(ROOT / "analysis" / f"{name}.ipynb", as_version=4)
    saved = {k: os.environ.get(k) for k in ("ESOLM_RESULTS", "MPLBACKEND")}
    os.environ.update(ESOLM_RESULTS=str(results), MPLBACKEND="Agg")
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "analysis")}}).execute()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return nb


def main(argv: list[str]) -> int:
    import nbformat

    from esolm.io import atomic_write_text

    results = argv[0] if argv else "results/tiny"
    for name in NOTEBOOKS:
        nb = execute(name, results)
        path = ROOT / "analysis" / f"{name}.ipynb"
        atomic_write_text(path, nbformat.writes(nb) + "\n")
        print(f"executed on {results}: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
