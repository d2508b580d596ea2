"""Read the markdown tables a tool prints, by their header names (never by column position)."""

from __future__ import annotations


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every table in ``text``: its rows as ``{header: cell}``, in order."""
    lines = text.splitlines()
    tables = []
    for i in range(len(lines) - 1):
        header, rule = lines[i].strip(), lines[i + 1].strip()
        if header.startswith("|") and rule.startswith("|---"):
            names = _cells(header)
            rows = []
            for line in lines[i + 2 :]:
                if not line.strip().startswith("|"):
                    break
                rows.append(dict(zip(names, _cells(line), strict=True)))
            tables.append(rows)
    return tables


def table_with(text: str, column: str) -> list[dict[str, str]]:
    """The one table of ``text`` that has a column named ``column``."""
    (table,) = [t for t in markdown_tables(text) if t and column in t[0]]
    return table
