"""A directory of ``.npz`` files checked against a manifest of their SHA-256 hashes.

Generic storage under the golden set (`golden`): files are written deterministically (fixed
zip timestamps and permissions, no compression, arrays in the given order), so equal arrays
give byte-identical files, and `problems` names every file that is missing, edited or not
listed. The manifest is ``MANIFEST.json``: a header of the caller's choosing with a ``format``
and a list ``cases`` of entries, each with at least ``name``, ``file`` and ``sha256``.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MANIFEST_NAME",
    "IntegrityError",
    "problems",
    "read_arrays",
    "read_manifest",
    "remove_unlisted",
    "write_arrays",
    "write_manifest",
]

MANIFEST_NAME = "MANIFEST.json"

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
"""Timestamp of every zip entry: the earliest zip allows, fixed for reproducible files."""


class IntegrityError(ValueError):
    """The directory does not match its manifest (edited, missing or unlisted files)."""


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` archive of `arrays` whose bytes depend on the arrays only.

    ``numpy.savez`` stamps each zip entry with the current time; here every entry gets
    `_ZIP_DATE`, fixed permissions and no compression.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, value in arrays.items():
            data = io.BytesIO()
            dtype = "<f8" if value.dtype.kind == "f" else value.dtype
            value = np.asarray(value, dtype=dtype, order="C")  # keeps 0-d arrays 0-d
            np.lib.format.write_array(data, value, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.create_system = 3  # Unix, whatever the platform
            info.external_attr = 0o644 << 16
            archive.writestr(info, data.getvalue())
    return buffer.getvalue()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """Write `arrays` (floats as float64) to the ``.npz`` file `path`; returns its SHA-256."""
    path.write_bytes(_npz_bytes(arrays))
    return _sha256(path)


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one ``.npz`` file, in stored order."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2) + "\n"
    (root / MANIFEST_NAME).write_text(text, encoding="utf-8", newline="\n")


def remove_unlisted(root: Path, files: set[str]) -> None:
    """Delete the ``.npz`` files of `root` that are not in `files` (stale cases)."""
    for stale in root.glob("*.npz"):
        if stale.name not in files:
            stale.unlink()


def read_manifest(root: Path, *, format: int) -> tuple[dict[str, Any] | None, list[str]]:
    """The parsed manifest, or None with the problems that prevent reading it."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None, [f"{MANIFEST_NAME} is missing from {root}"]
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, [f"{MANIFEST_NAME} in {root} is not valid JSON: {err}"]
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cases"), list):
        return None, [f"{MANIFEST_NAME} in {root} has no list of cases"]
    if manifest.get("format") != format:
        return None, [f"{MANIFEST_NAME} has format {manifest.get('format')!r}; "
                      f"this version reads format {format}"]
    return manifest, []


def _entry_problems(root: Path, entry: Any) -> list[str]:
    """Problems of one manifest entry: malformed, missing file or SHA-256 mismatch."""
    if not isinstance(entry, dict) or not all(
        isinstance(entry.get(key), str) for key in ("name", "file", "sha256")
    ):
        return [f"{MANIFEST_NAME} has a malformed case entry: {entry!r}"]
    name = entry["file"]
    if Path(name).name != name:
        return [f"{MANIFEST_NAME} lists {name!r}, which is not a plain file name"]
    path = root / name
    if not path.is_file():
        return [f"{name} is listed in {MANIFEST_NAME} but missing from {root}"]
    actual = _sha256(path)
    if actual != entry["sha256"]:
        return [f"{name}: SHA-256 {actual} does not match {entry['sha256']} in {MANIFEST_NAME}"]
    return []


def problems(root: Path, *, format: int) -> list[str]:
    """One message per problem of the directory, each naming the file at fault: a missing or
    unreadable manifest, a listed file that is missing or whose SHA-256 differs, a file present
    but not listed. Empty when the directory is intact."""
    manifest, found = read_manifest(root, format=format)
    if manifest is None:
        return found
    listed = set()
    for entry in manifest["cases"]:
        found += _entry_problems(root, entry)
        if isinstance(entry, dict):
            listed.add(entry.get("file"))
    for path in sorted(root.iterdir()):
        if path.name != MANIFEST_NAME and path.name not in listed:
            found.append(f"{path.name} is in {root} but not listed in {MANIFEST_NAME}")
    return found
