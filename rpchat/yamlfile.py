"""Reading user-editable YAML safely: size-capped, no Python tags, no alias bombs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rpchat.errors import ConfigError
from rpchat.userfile import read_capped

MAX_YAML_BYTES = 2 * 1024 * 1024
MAX_YAML_DEPTH = 100


def parse_yaml(text: str, source: str | Path) -> Any:
    """Parse YAML text with the safe loader; aliases are refused (they enable 'billion laughs')."""
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError("YAML aliases (*name) are not allowed", source)
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                # PyYAML's scanner slows down quadratically with flow nesting; stop long before that.
                if depth > MAX_YAML_DEPTH:
                    raise ConfigError(f"YAML is nested deeper than {MAX_YAML_DEPTH} levels", source)
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"invalid YAML{where}: {problem}", source) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", source) from None
    except ValueError as e:
        # PyYAML builds ints with int(), which refuses more than 4300 digits.
        raise ConfigError(f"invalid YAML: {str(e).splitlines()[0][:120]}", source) from None


def load_yaml(path: Path, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """Read and parse a YAML file, with a clear error for a missing, huge or non-UTF-8 file."""
    raw = read_capped(path, max_bytes, ConfigError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", path) from None
    return parse_yaml(text, path)


def dump_yaml(data: Any) -> bytes:
    """Serialize plain data as readable block YAML."""
    text: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    return text.encode("utf-8")
