"""YAML that a person writes, read with bounds: a hostile or broken file is refused with its
line and column in well under a second and a few megabytes, instead of hanging, exhausting
memory or ending in a bare exception.

Bounded: the file's size (checked before parsing), the nesting depth (checked as it is
parsed, so deep nesting never reaches Python's recursion limit) and the number of nodes the
document holds once every alias is expanded (a "billion laughs" file is a few hundred bytes
that expands to 10^9 nodes). Refused: recursive anchors, duplicate keys, mappings or lists
used as keys, bytes that are not UTF-8, and control characters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a pipelines file is a few KB
MAX_DEPTH = 64
MAX_NODES = 20_000  # after alias expansion; a pipelines file holds hundreds
_COLLECTION_START = (yaml.MappingStartEvent, yaml.SequenceStartEvent)


class Refused(Exception):
    """A file that is not acceptable YAML; `line` and `column` count from 1."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


def read(path: Path) -> str:
    """The text of `path`, reading no more than the size bound; OSError if unreadable."""
    with path.open("rb") as file:
        data = file.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise _too_large(max(len(data), os.fstat(file.fileno()).st_size))
    return decode(data)


def _too_large(size: int) -> Refused:
    more = f"{size:,} bytes" if size > MAX_BYTES + 1 else "more"
    return Refused(f"the file is too large ({more}; the limit is {MAX_BYTES:,} bytes): "
                   "a pipelines file is a few KB")


def decode(data: bytes) -> str:
    """UTF-8 text, or a refusal naming where the bytes stop being UTF-8."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise Refused("not UTF-8 text: it starts with a UTF-16 byte-order mark; save the file "
                      "as UTF-8", 1, 1)
    head = data[:64]
    if head and head.count(0) * 4 >= len(head):
        at = data.index(0)
        raise Refused(f"not UTF-8 text: null bytes from byte offset {at} (UTF-16?); save the "
                      "file as UTF-8", data.count(b"\n", 0, at) + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        at = error.start
        raise Refused(f"not UTF-8 text: byte 0x{data[at]:02x} at byte offset {at}; save the "
                      "file as UTF-8", data.count(b"\n", 0, at) + 1) from None


def load(text: str) -> tuple[Any, yaml.Node | None]:
    """The document's data, and its node tree (to locate problems found later)."""
    if len(text) > MAX_BYTES // 4 and len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise _too_large(len(text.encode("utf-8", "replace")))
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as error:
        raise _unprintable(text, error) from None
    try:
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    except yaml.MarkedYAMLError as error:
        raise _located(error) from None
    except yaml.YAMLError as error:
        raise Refused(f"invalid YAML: {' '.join(str(error).split())}") from None
    finally:
        loader.dispose()


def _unprintable(text: str, error: yaml.reader.ReaderError) -> Refused:
    at = error.position
    line = text.count("\n", 0, at) + 1
    column = at - text.rfind("\n", 0, at)
    name = "a null byte" if error.character == 0 else f"control character U+{error.character:04X}"
    return Refused(f"{name} is not allowed in YAML", line, column)


def _located(error: yaml.MarkedYAMLError) -> Refused:
    mark = error.problem_mark or error.context_mark
    message = ", ".join(part for part in (error.context, error.problem) if part) or "invalid"
    if not isinstance(error, _Bound):
        message = f"invalid YAML: {message}"
    line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return Refused(" ".join(message.split()), line, column)


class _Bound(yaml.composer.ComposerError):
    """A bound of this module was crossed: the message says which, without 'invalid YAML'."""

    def __init__(self, message: str, mark: yaml.Mark) -> None:
        super().__init__(None, None, message, mark)


class _Loader(yaml.SafeLoader):
    """SafeLoader counting nodes and depth as it composes, and strict about keys."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._nodes = 0
        self._depth = 0
        self._expanded: dict[int, int] = {}  # id(node) → nodes it stands for, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            return self._alias(event, parent, index)
        self._count(1, event)
        if not isinstance(event, _COLLECTION_START):
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _Bound(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _alias(self, event: yaml.AliasEvent, parent: yaml.Node | None, index: Any) -> yaml.Node:
        target = self.anchors.get(event.anchor)
        # A collection is registered under its anchor before its items are composed, and
        # gets its end mark when it is complete: no end mark means the alias is inside it.
        if isinstance(target, yaml.CollectionNode) and target.end_mark is None:
            raise _Bound(f"alias *{event.anchor} refers to the anchor it is inside (a "
                         "recursive structure)", event.start_mark)
        node = super().compose_node(parent, index)
        self._count(self._size(node), event)
        return node

    def _count(self, nodes: int, event: yaml.Event) -> None:
        self._nodes += nodes
        if self._nodes <= MAX_NODES:
            return
        if isinstance(event, yaml.AliasEvent):
            raise _Bound(f"alias *{event.anchor} expands to {nodes:,} nodes, taking the file "
                         f"past {MAX_NODES:,} nodes with aliases expanded (a billion-laughs "
                         "file?)", event.start_mark)
        raise _Bound(f"more than {MAX_NODES:,} nodes: a pipelines file holds hundreds",
                     event.start_mark)

    def _size(self, node: yaml.Node) -> int:
        """Nodes `node` stands for with aliases expanded; memoised, so linear in the tree."""
        known = self._expanded.get(id(node))
        if known is not None:
            return known
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._size(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._size(key) + self._size(value) for key, value in node.value)
        self._expanded[id(node)] = size
        return size

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as error:  # e.g. a 5,000-digit integer, 2024-13-45
            kind = node.tag.rsplit(":", 1)[-1]
            value = str(node.value)[:40] if isinstance(node, yaml.ScalarNode) else "this"
            reason = str(error).split(";")[0]
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {value!r} as {kind}: {reason}", node.start_mark
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """Refuses duplicate keys, which PyYAML would otherwise silently overwrite, and
        mappings or lists as keys."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if isinstance(key_node, yaml.CollectionNode):
                kind = "mapping" if isinstance(key_node, yaml.MappingNode) else "list"
                raise yaml.constructor.ConstructorError(
                    None, None, f"a {kind} cannot be a key", key_node.start_mark)
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)
