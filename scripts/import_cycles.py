"""Counts import cycles in src/meshline: between subpackages and between modules.

Usage: .venv/bin/python scripts/import_cycles.py [--type-checking]
A cycle is a strongly connected component of more than one node in the import graph
(runtime imports, including those inside functions; ``--type-checking`` adds the ones under
``if TYPE_CHECKING:``). Exits 1 when there is any cycle between subpackages.
"""

from __future__ import annotations

import sys

import grimp


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def main() -> int:
    type_checking = "--type-checking" in sys.argv
    g = grimp.build_graph("meshline", exclude_type_checking_imports=not type_checking, cache_dir=None)
    modules = {m: set() for m in g.modules}
    packages: dict[str, set[str]] = {}

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    for m in g.modules:
        for imported in g.find_modules_directly_imported_by(m):
            if not imported.startswith("meshline"):
                continue
            # a package's __init__ importing its own submodules is not a cycle worth counting
            if imported.startswith(m + "."):
                continue
            modules[m].add(imported)
            a, b = package(m), package(imported)
            packages.setdefault(a, set())
            if a != b:
                packages[a].add(b)
    module_cycles = components(modules)
    package_cycles = components(packages)
    print(f"package cycles: {len(package_cycles)}")
    for c in package_cycles:
        print("  ", " <-> ".join(c))
    print(f"module cycles: {len(module_cycles)}")
    for c in module_cycles:
        print("  ", " <-> ".join(c))
    return 1 if package_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
