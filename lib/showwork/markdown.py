"""Free text in a markdown table (the report's and TensorBoard's sampled completions)."""

from __future__ import annotations


def cell(text: str, limit: int | None = None) -> str:
    """`text` as one table cell: one line (breaks shown as ⏎), no pipes, inside a code span so the
    tags the rewards look for (<answer>) show as written instead of being read as HTML; cut at `limit`."""
    flat = " ⏎ ".join(str(text).replace("\r", "").split("\n")).replace("|", "¦").replace("`", "'").strip()
    if limit is not None and len(flat) > limit:
        flat = flat[:limit] + " …"
    return f"`{flat}`"
