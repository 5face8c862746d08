"""Module sizes, the longest functions and the README's length, at a git revision or in the work tree.

    uv run python benchmarks/code_stats.py            # the work tree
    uv run python benchmarks/code_stats.py 73818a2    # a commit

Functions decorated with a jit (numba, in older commits) are left out of the function lengths (compiled kernels may be
long).
"""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout


def read_tree(rev: str | None) -> dict[str, str]:
    """Path -> text of README.md and every .py file under cs336_basics/, at `rev` (None: the work tree)."""
    if rev is None:
        paths = [str(p.relative_to(REPO)) for p in sorted((REPO / "cs336_basics").rglob("*.py"))] + ["README.md"]
        return {p: (REPO / p).read_text(encoding="utf-8") for p in paths}
    paths = [p for p in _git("ls-tree", "-r", "--name-only", rev, "cs336_basics").split() if p.endswith(".py")]
    return {p: _git("show", f"{rev}:{p}") for p in paths + ["README.md"]}


def function_lengths(source: str) -> list[tuple[int, str]]:
    """(lines, name) of every function that is not jit-compiled."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if not any("jit" in ast.unparse(d) for d in node.decorator_list):
                out.append((node.end_lineno - node.lineno + 1, node.name))
    return out


def main(rev: str | None) -> None:
    tree = read_tree(rev)
    readme = tree.pop("README.md")
    modules = sorted(((text.count("\n"), path) for path, text in tree.items()), reverse=True)
    functions = sorted(
        ((n, f"{Path(path).name}:{name}") for path, text in tree.items() for n, name in function_lengths(text)),
        reverse=True,
    )
    print(f"modules: {len(modules)}, {sum(n for n, _ in modules)} lines")
    print("over 500 lines:", ", ".join(f"{Path(p).name} {n}" for n, p in modules if n > 500) or "none")
    print("longest functions:", ", ".join(f"{name} {n}" for n, name in functions[:6]))
    print("functions over 80 lines:", ", ".join(f"{name} {n}" for n, name in functions if n > 80) or "none")
    print(f"README: {readme.count(chr(10))} lines, {len(readme.split())} words")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
