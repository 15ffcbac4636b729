"""YAML as Meshline reads it (the CLI's files, the dashboard's editor): PyYAML's safe loader,
plus two refusals.

* **Aliases are bounded.** ``*name`` refers to an anchored node without copying it, but the
  document the CLI sends is JSON, where every alias is expanded: a "billion laughs" file of a
  few lines grew to 4 GB before ``MemoryError``. At most :data:`MAX_ALIASES` aliases per file,
  and at most :data:`MAX_NODES` nodes once expanded.
* **Duplicate keys are an error.** YAML says keys are unique; PyYAML silently keeps the last
  one, so a second ``action: deny`` under the first ``action: allow`` changed the policy
  without a word. (Merge keys, ``<<: *base``, may still be overridden: that is what they are for.)

Both say the line.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_ALIASES = 100
MAX_NODES = 200_000


class StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise ConstructorError(
                    None, None,
                    f"more than {MAX_ALIASES} aliases (*name) in one file; write the values out or split the file",
                    mark,
                )  # fmt: skip
        return super().compose_node(parent, index)

    def construct_document(self, node: Node) -> Any:
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base constructor refuses it, with its own message
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConstructorError(
                    None, None,
                    f"key '{key}' appears twice in this mapping (first at line {seen[key]}); keep one",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = line
        return super().construct_mapping(node, deep)


def _check_expanded_size(root: Node) -> None:
    """Nodes the document has once every alias is expanded, counted without expanding
    (an aliased node is one object: its size is computed once)."""
    size: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        if not done and id(node) in visiting:
            raise ConstructorError(None, None, "an alias refers to a node that contains it; that never ends",
                                   node.start_mark)  # fmt: skip
        children = _children(node)
        if done or not children:
            visiting.discard(id(node))
            size[id(node)] = 1 + sum(size.get(id(c), 0) for c in children)
            if size[id(node)] > MAX_NODES:
                raise ConstructorError(
                    None, None,
                    f"this document expands to more than {MAX_NODES} values (through aliases); write it out"
                    " or split it",
                    node.start_mark,
                )  # fmt: skip
            continue
        visiting.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    assert isinstance(node, ScalarNode)
    return []


def load_all(text: str) -> list[Any]:
    """Every document of ``text``; yaml.YAMLError (with ``problem_mark``) when refused."""
    loader = StrictLoader(text)
    try:
        docs = []
        while loader.check_data():
            docs.append(loader.get_data())
        return docs
    finally:
        loader.dispose()


def load_all_with_lines(text: str) -> tuple[list[Any], list[dict[str, int]]]:
    """:func:`load_all`, and for each document the line (1-based) of every field path in it
    (``spec.rules[0].backends``), so an error naming a field can point at its line."""
    loader = StrictLoader(text)
    try:
        docs: list[Any] = []
        lines: list[dict[str, int]] = []
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            docs.append(loader.construct_document(node))
            lines.append(_lines(node))
        return docs, lines
    finally:
        loader.dispose()


def _lines(root: Node) -> dict[str, int]:
    out: dict[str, int] = {}
    stack: list[tuple[str, Node]] = [("", root)]
    while stack and len(out) < MAX_NODES:
        path, node = stack.pop()
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if isinstance(key, ScalarNode):
                    sub = f"{path}.{key.value}" if path else str(key.value)
                    out.setdefault(sub, key.start_mark.line + 1)
                    stack.append((sub, value))
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                sub = f"{path}[{i}]"
                out.setdefault(sub, item.start_mark.line + 1)
                stack.append((sub, item))
    return out
