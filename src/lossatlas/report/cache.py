"""Reuse of unchanged sections: each section's output is kept in ``OUT/<name>/section.json``
with the key it was computed under,

    key = sha256(section name, section version, lossatlas version, options, input hashes)

where the inputs are the run's hash (:func:`~lossatlas.report.runspec.run_hash`), run B's, the
sweep folder's or other sections' keys. A rerun whose key matches, and whose files all still
exist, reads the section back instead of computing it. ``section.json`` is written last and
atomically, so an interrupted atlas resumes at the section it was in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lossatlas import __version__
from lossatlas.report.registry import Figure, Output

__all__ = ["FILE", "clear_stale", "folder_hash", "read", "section_key", "write"]

FILE = "section.json"


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def section_key(name: str, version: int, options: Mapping, inputs: Mapping[str, str]) -> str:
    """The cache key of a section (see the module docstring)."""
    doc = {"section": name, "version": version, "lossatlas": __version__,
           "options": dict(options), "inputs": dict(inputs)}
    return hashlib.sha256(_json(doc).encode()).hexdigest()[:16]


def folder_hash(folder: str | os.PathLike, names: Sequence[str]) -> str:
    """A hash of the named files of ``folder`` (missing ones count as empty)."""
    h = hashlib.sha256()
    for n in names:
        p = Path(folder) / n
        h.update(n.encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _rel(path: Path, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)


def write(folder: Path, out: Path, key: str, options: Mapping, output: Output,
          seconds: float) -> dict:
    """Write ``folder/section.json`` (atomically) and return its document: paths relative to
    the atlas folder ``out``."""
    doc = {
        "key": key,
        "options": dict(options),
        "seconds": round(seconds, 3),
        "figures": [{"path": _rel(f.path, out), "title": f.title, "interactive": f.interactive}
                    for f in output.figures],
        "files": [_rel(p, out) for p in output.files],
        "numbers": output.numbers,
        "summary": output.summary,
        "caption": output.caption,
        "verdict": output.verdict,
        "command": output.command,
        "provenance": output.provenance,
        "table": output.table,
    }
    from lossatlas.batteries.runs import json_safe

    doc = json_safe(doc)  # NaN -> null, numpy scalars -> Python, paths -> str
    tmp = folder / (FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, folder / FILE)
    return doc


def clear_stale(folder: Path, key: str) -> None:
    """Before a section is computed: when its ``section.json`` holds another key (its options or
    inputs changed) remove the folder's files, so no file of the old computation is resumed;
    without a ``section.json`` (an interrupted section) the files stay and resume."""
    path = folder / FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("key")
    except (OSError, ValueError):
        old = None
    if old == key:
        return
    for p in folder.iterdir():
        if p.is_file():
            p.unlink()


def read(folder: Path, out: Path, key: str) -> dict | None:
    """The section's document when its key is ``key`` and all its files exist, else None."""
    path = folder / FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if doc.get("key") != key:
        return None
    paths = [f["path"] for f in doc.get("figures", [])] + list(doc.get("files", []))
    if not all((out / p).exists() for p in paths):
        return None
    return doc


def as_output(doc: Mapping, out: Path) -> Output:
    """An :class:`Output` back from a section document."""
    return Output(
        figures=[Figure(out / f["path"], f.get("title", ""), f.get("interactive", False))
                 for f in doc.get("figures", [])],
        numbers=dict(doc.get("numbers", {})), summary=dict(doc.get("summary", {})),
        caption=list(doc.get("caption", [])), verdict=doc.get("verdict"),
        files=[out / p for p in doc.get("files", [])], command=list(doc.get("command", [])),
        provenance=dict(doc.get("provenance", {})), table=list(doc.get("table", [])),
    )
