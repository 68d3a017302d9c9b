"""Write the tutorial notebooks ``notebooks/NN_*.ipynb`` from their sources ``notebooks/src/NN_*.py``.

Each source is a plain Python file in the "percent" format that jupytext and most editors read: a
line ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell whose lines are comments
(``# text``, or ``#`` for an empty line). Edit the source, then run::

    python notebooks/_build.py            # rewrite every notebook (or name some: 01_quickstart)
    python notebooks/_build.py --check    # exit 1 if a committed notebook differs from its source

The notebooks are committed without outputs, with ``execution_count`` None and stable cell ids;
``tests/test_notebooks.py`` checks they equal what this script writes and executes them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
CODE, MARKDOWN = "# %%", "# %% [markdown]"


def sources() -> dict[str, Path]:
    """Notebook file name -> its source, e.g. ``{"01_quickstart.ipynb": notebooks/src/01_quickstart.py}``."""
    return {f"{p.stem}.ipynb": p for p in sorted(SOURCES.glob("[0-9][0-9]_*.py"))}


def parse(text: str, where: str = "<source>") -> list[tuple[str, str]]:
    """The ``("md" | "code", source)`` cells of a percent-format file."""
    cells: list[tuple[str, list[str]]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if line in (CODE, MARKDOWN):
            cells.append(("md" if line == MARKDOWN else "code", []))
        elif not cells:
            raise ValueError(f"{where}:{number}: a notebook source must start with '{CODE}' or '{MARKDOWN}'")
        elif cells[-1][0] == "md" and line and line != "#" and not line.startswith("# "):
            raise ValueError(f"{where}:{number}: markdown lines must be comments ('# text' or '#'); got {line!r}")
        else:
            cells[-1][1].append(line)
    out = []
    for kind, lines in cells:
        while lines and not lines[-1].strip():  # the blank line before the next cell marker
            lines.pop()
        if kind == "md":
            lines = [line[2:] if line.startswith("# ") else "" for line in lines]
        out.append((kind, "\n".join(lines)))
    return out


def build(name: str) -> nbformat.NotebookNode:
    """Notebook ``name`` (e.g. ``"01_quickstart.ipynb"``) from its source: no outputs, stable cell ids."""
    path = sources()[name]
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    stem = name.split("_")[0]
    for i, (kind, source) in enumerate(parse(path.read_text(), str(path.relative_to(HERE.parent)))):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell["id"] = f"nb{stem}-{i:02d}"
        if kind == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv: list[str]) -> int:
    check = "--check" in argv
    names = [a if a.endswith(".ipynb") else f"{a}.ipynb" for a in argv if a != "--check"] or list(sources())
    stale = []
    for name in names:
        text = nbformat.writes(build(name)) + "\n"
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print("wrote", path.relative_to(HERE.parent))
    if stale:
        print(f"out of date with notebooks/src/: {', '.join(stale)}; run `python notebooks/_build.py`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
