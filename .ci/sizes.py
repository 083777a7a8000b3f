"""Function sizes and parameter counts (self/cls excluded): python3 .ci/sizes.py harness analysis"""
import ast, sys, pathlib
rows = []
for root in sys.argv[1:]:
    for p in sorted(pathlib.Path(root).rglob("*.py")):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                n = len(names)
                lines = node.end_lineno - node.lineno + 1
                rows.append((str(p), node.name, node.lineno, n, lines))
over6 = [r for r in rows if r[3] > 6]; over50 = [r for r in rows if r[4] > 50]
print(f"functions: {len(rows)}; >6 params: {len(over6)}; >50 lines: {len(over50)}; max params {max(r[3] for r in rows)}; max lines {max(r[4] for r in rows)}")
for r in sorted(over6, key=lambda r: -r[3]): print(f"  params {r[3]:2d}  {r[0]}:{r[2]} {r[1]}")
for r in sorted(over50, key=lambda r: -r[4]): print(f"  lines {r[4]:3d}  {r[0]}:{r[2]} {r[1]}")
