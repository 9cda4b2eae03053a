"""Bounded readers for user files: YAML without alias bombs, JSON without unbounded nesting.

Every YAML reader in bhsearch goes through ``compose_yaml`` / ``load_yaml``: the document is composed
with ``yaml.SafeLoader`` (the safety of ``yaml.safe_load``) and its node graph is measured *as if every
alias were expanded* before anything is constructed. A "billion laughs" file (a few lines of nested
aliases) is refused in milliseconds instead of exhausting memory later, when a list or a description
is walked. Limits errors are ``yaml.YAMLError``s, so callers' existing "malformed YAML" handling
reports them with the line of the offending node.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

MAX_NODES = 100_000  # nodes after alias expansion; bhsearch's own files have a few hundred
MAX_ALIASES = 1_000
MAX_DEPTH = 64


class YAMLLimitError(yaml.MarkedYAMLError):
    """A YAML document that would expand beyond the limits (alias bomb, recursive alias, deep nesting)."""


def _check(root: yaml.Node | None) -> None:
    """Expanded size of the node graph (memoised per node: linear in the composed nodes)."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    active: set[int] = set()
    aliases = 0

    def size(node: yaml.Node, depth: int) -> int:
        nonlocal aliases
        key = id(node)
        if key in sizes:
            aliases += 1
            if aliases > MAX_ALIASES:
                raise YAMLLimitError(problem=f"more than {MAX_ALIASES} alias uses", problem_mark=node.start_mark)
            return sizes[key]
        if key in active:
            raise YAMLLimitError(problem="recursive alias", problem_mark=node.start_mark)
        if depth > MAX_DEPTH:
            raise YAMLLimitError(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=node.start_mark)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                raise YAMLLimitError(
                    problem=f"more than {MAX_NODES} values once aliases are expanded (an alias bomb?)",
                    problem_mark=node.start_mark,
                )
        active.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def _composed(text: str) -> tuple[yaml.SafeLoader, yaml.Node | None]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except RecursionError:
        loader.dispose()
        raise YAMLLimitError(problem=f"nested deeper than {MAX_DEPTH} levels") from None
    except BaseException:
        loader.dispose()
        raise
    try:
        _check(node)
    except BaseException:
        loader.dispose()
        raise
    return loader, node


def compose_yaml(text: str) -> yaml.Node | None:
    """``yaml.compose`` with ``yaml.SafeLoader``, refusing documents beyond the limits (for node marks)."""
    loader, node = _composed(text)
    loader.dispose()
    return node


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` refusing alias bombs, recursive aliases and deep nesting (``YAMLLimitError``)."""
    loader, node = _composed(text)
    try:
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def load_json(text: str) -> Any:
    """``json.loads`` that turns too-deep nesting into a ``ValueError`` instead of a ``RecursionError``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


__all__ = ["MAX_ALIASES", "MAX_DEPTH", "MAX_NODES", "YAMLLimitError", "compose_yaml", "load_json", "load_yaml"]
