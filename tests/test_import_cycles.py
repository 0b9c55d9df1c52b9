"""No import cycles anywhere in ksefd (issue #9), module by module, counting imports inside functions and under
TYPE_CHECKING too: a cycle hidden in a function is still one. pyproject.toml's `acyclic_siblings` contract
(lint-imports) checks the same between packages; this test names the modules of a cycle."""

from __future__ import annotations

import grimp


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm, iterative: every group of modules that import each other in a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_ksefd_has_no_import_cycle() -> None:
    graph = grimp.build_graph("ksefd", cache_dir=None)
    cycles = strongly_connected(graph)
    described = []
    for group in cycles:
        edges = [f"{a} -> {b}" for a in group for b in sorted(graph.find_modules_directly_imported_by(a))
                 if b in group]
        described.append(", ".join(edges))
    assert cycles == [], "import cycles:\n" + "\n".join(described)


def test_the_check_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert strongly_connected(graph) == [["p.a", "p.b"]]
