"""How much the two recipes repeat each other, at a git revision: their line counts and the code
lines of each that also stand in the other (stripped; blank lines, comments and lone brackets left
out).

    python benchmarks/recipe_overlap.py HEAD
    python benchmarks/recipe_overlap.py <older revision>
"""

from __future__ import annotations

import subprocess
import sys

RECIPES = ("recipes/text_classification.py", "recipes/tagging.py")
_TRIVIAL = {"(", ")", "[", "]", "{", "}", '"""'}


def code_lines(rev: str, path: str) -> tuple[int, list[str]]:
    text = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
    kept = [s for s in (line.strip() for line in text.splitlines())
            if s and not s.startswith("#") and s not in _TRIVIAL]
    return text.count("\n"), kept


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else "HEAD"
    (n_a, a), (n_b, b) = (code_lines(rev, path) for path in RECIPES)
    in_b, in_a = set(b), set(a)
    print(f"{rev}: {RECIPES[0]} {n_a} lines, {RECIPES[1]} {n_b} lines")
    print(f"  code lines of {RECIPES[0]} also in {RECIPES[1]}: {sum(x in in_b for x in a)} of {len(a)}")
    print(f"  code lines of {RECIPES[1]} also in {RECIPES[0]}: {sum(x in in_a for x in b)} of {len(b)}")


if __name__ == "__main__":
    main()
