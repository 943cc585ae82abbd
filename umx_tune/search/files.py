"""Grid and space files: found by shipped name or path, read as YAML with errors that say where."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from umx_tune.errors import ConfigError

SHIPPED = Path(__file__).resolve().parent
KINDS = {"grid": "grids", "space": "spaces"}


def shipped_names(kind: str) -> list[str]:
    """Names of the grids or spaces shipped with umx-tune (kind 'grid' or 'space')."""
    return sorted(p.stem for p in (SHIPPED / KINDS[kind]).glob("*.yaml"))


def resolve(kind: str, ref: str) -> Path:
    """The file of a shipped grid/space name (e.g. 'seed') or of a path to a YAML file."""
    looks_like_path = any(sep in ref for sep in ("/", "\\")) or ref.endswith((".yaml", ".yml"))
    if not looks_like_path:
        path = SHIPPED / KINDS[kind] / f"{ref}.yaml"
        if path.is_file():
            return path
        names = ", ".join(shipped_names(kind))
        raise ConfigError(
            f"unknown {kind} {ref!r}; shipped {KINDS[kind]}: {names} (or give a YAML file path)"
        )
    path = Path(ref)
    if not path.is_file():
        raise ConfigError(f"{kind} file {ref} does not exist")
    return path


def display_name(path: Path) -> str:
    """How errors and tags name a file: the shipped name, else the path as given."""
    for kind, folder in KINDS.items():
        if path.parent == SHIPPED / folder:
            return f"{kind} {path.stem}"
    return str(path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one, which
    would drop a grid entry without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """The parsed file; malformed YAML is a ConfigError naming the file, line and column."""
    where = display_name(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: cannot read: {err}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: malformed YAML{at}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: malformed YAML: {err}") from None


def check_keys(mapping: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
    """mapping must be a dict holding the required keys and no others."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    for key in required:
        if key not in mapping:
            raise ConfigError(f"{where}: missing key {key!r}")
    allowed = required + optional
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}")
    return mapping
