"""Fingerprints of a search's input files, so a resume cannot mix in results from changed inputs.

The recorded candidates were scored on the data files, the checkpoint and the cached
base model as they were; a resume over an edited npz or a replaced checkpoint would
put candidates of another problem into the same study. Each file's fingerprint is its
size and a SHA-256 of its content (of every byte up to ``FULL_HASH_BYTES``; above, of
three ``SAMPLE_BYTES`` slices at the start, middle and end, plus its mtime); a folder's
(``imagefolder`` data) is the SHA-256 of its listing: every file's relative path, size
and mtime.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.config import SearchConfig

FULL_HASH_BYTES = 64 * 2**20
SAMPLE_BYTES = 2**20


def input_files(cfg: "SearchConfig", base_cache: Path | None = None) -> dict[str, Path]:
    """The input files of ``cfg`` by the field that names them (only those set), plus the
    run folder's cached base model when given and present."""
    out = {
        k: Path(v).expanduser().resolve()
        for k, v in (("data.path", cfg.data.path), ("data.test_path", cfg.data.test_path), ("model.checkpoint", cfg.model.checkpoint))
        if v
    }
    if base_cache is not None and base_cache.exists():
        out["base model cache"] = base_cache
    return out


def fingerprint(path: Path) -> dict[str, Any]:
    """The fingerprint of a file or folder (``{"missing": True}`` when it is gone)."""
    if path.is_dir():
        listing = hashlib.sha256()
        count = 0
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                p = Path(root) / name
                st = p.stat()
                listing.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                count += 1
        return {"kind": "folder", "files": count, "listing_sha256": listing.hexdigest()}
    if not path.exists():
        return {"missing": True}
    st = path.stat()
    out: dict[str, Any] = {"kind": "file", "size": st.st_size}
    h = hashlib.sha256()
    with path.open("rb") as f:
        if st.st_size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(SAMPLE_BYTES), b""):
                h.update(block)
            out["sha256"] = h.hexdigest()
        else:
            for offset in (0, st.st_size // 2, max(st.st_size - SAMPLE_BYTES, 0)):
                f.seek(offset)
                h.update(f.read(SAMPLE_BYTES))
            out.update(sample_sha256=h.hexdigest(), mtime_ns=st.st_mtime_ns)
    return out


def fingerprints(files: dict[str, Path], root: Path | None = None) -> dict[str, dict[str, Any]]:
    """``{field: {"path": ..., **fingerprint}}`` of ``files``; paths inside ``root`` (the run
    folder) relative to it, so a copied or moved run folder keeps its fingerprints."""
    return {k: {"path": str(p.relative_to(root) if root and p.is_relative_to(root) else p), **fingerprint(p)} for k, p in files.items()}


def changes(recorded: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[str]:
    """One line per input that differs between two ``fingerprints`` results."""
    lines = []
    for key in sorted(recorded.keys() | current.keys()):
        old, new = recorded.get(key), current.get(key)
        if old == new:
            continue
        if old is None or new is None:
            lines.append(f"{key}: {'added' if old is None else 'no longer given'} ({(new or old or {}).get('path')})")
        elif old.get("path") != new.get("path"):
            lines.append(f"{key}: {old.get('path')} -> {new.get('path')}")
        elif new.get("missing"):
            lines.append(f"{key}: {new['path']} no longer exists")
        elif old.get("size") != new.get("size"):
            lines.append(f"{key}: {new['path']} changed size ({old.get('size')} -> {new.get('size')} bytes)")
        else:
            lines.append(f"{key}: {new['path']} changed content")
    return lines
