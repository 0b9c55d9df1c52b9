"""Changing a company's keys in the config file as text, so the user's comments, order and layout stay
(`ksefd certificate enroll --update-config`). The new text is validated with the normal loader before it
replaces the file; the previous file is kept as `<name>.bak`. A key set to None is commented out, with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from .load import parse_config
from .model import ConfigError

_HEADER = re.compile(r"^\s*\[")
_COMPANY = re.compile(r"^\s*\[\[\s*companies\s*\]\]\s*(#.*)?$")
_NAME = re.compile(r'^\s*name\s*=\s*"([^"]*)"')


def _block(lines: list[str], company: str) -> tuple[int, int]:
    """[start, end) of the company's own keys: its `[[companies]]` line up to the next table header."""
    for index, line in enumerate(lines):
        if not _COMPANY.match(line):
            continue
        end = index + 1
        while end < len(lines) and not _HEADER.match(lines[end]):
            end += 1
        if any((m := _NAME.match(line)) and m.group(1) == company for line in lines[index + 1:end]):
            return index, end
    raise KeyError(company)


def set_company_keys(text: str, company: str, values: dict[str, str | None], reason: str) -> str:
    lines = text.splitlines()
    start, end = _block(lines, company)
    for key, value in values.items():
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        found = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
        if value is None:
            if found is not None:
                lines[found] = f"# {lines[found].strip()}   # {reason}"
            continue
        line = f"{key} = {json.dumps(value, ensure_ascii=False)}"   # a TOML basic string is JSON-compatible here
        if found is not None:
            lines[found] = f"{line}   # {reason}"
        else:
            last = max((i for i in range(start + 1, end) if lines[i].strip() and not lines[i].lstrip().startswith("#")),
                       default=start)
            lines.insert(last + 1, f"{line}   # {reason}")
            end += 1
    return "\n".join(lines) + "\n"


def update_company(path: Path, company: str, values: dict[str, str | None], reason: str) -> Path:
    """Rewrite `path` with the company's keys changed; returns the backup's path. ConfigError if the result would
    not load (the file is then left as it was)."""
    text = path.read_text(encoding="utf-8")
    changed = set_company_keys(text, company, values, reason)
    parse_config(changed, base_dir=path.parent, source=path)       # raises ConfigError, nothing written
    backup = path.with_name(path.name + ".bak")
    shutil.copy2(path, backup)
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(changed)
        handle.flush()
        os.fsync(handle.fileno())
    shutil.copymode(path, temp)
    os.replace(temp, path)
    return backup


__all__ = ["ConfigError", "set_company_keys", "update_company"]
