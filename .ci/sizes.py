"""Function sizes and parameter counts (self/cls excluded): python3 .ci/sizes.py harness analysis"""

import ast
import pathlib
import sys


def rows(root: str) -> list[tuple[str, str, int, int, int]]:
    """(file, function, line, parameters, lines) for every function under `root`."""
    found = []
    for path in sorted(pathlib.Path(root).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                found.append((str(path), node.name, node.lineno, len(names), node.end_lineno - node.lineno + 1))
    return found


def main(roots: list[str]) -> None:
    for root in roots:
        found = rows(root)
        over6 = sorted((r for r in found if r[3] > 6), key=lambda r: -r[3])
        over50 = sorted((r for r in found if r[4] > 50), key=lambda r: -r[4])
        print(f"{root}: functions {len(found)}; >6 params {len(over6)}; >50 lines {len(over50)}; "
              f"max params {max(r[3] for r in found)}; max lines {max(r[4] for r in found)}")
        for file, name, line, params, _ in over6:
            print(f"  params {params:2d}  {file}:{line} {name}")
        for file, name, line, _, length in over50:
            print(f"  lines {length:3d}  {file}:{line} {name}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["harness", "analysis"])
