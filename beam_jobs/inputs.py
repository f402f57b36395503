"""Listing a batch job's inputs: files, directories and globs through Beam's ``FileSystems``, manifests and
file-name label patterns, and the checks a path passes before it is opened (special files, broken links,
names that are not UTF-8).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from rnnstream.beam_jobs.common import InputRecord, has_scheme
from rnnstream.pipeline.errors import (
    ConfigError,
    DatasetError,
    FileNameError,
)


_GLOB_CHARS = re.compile(r"[*?\[]")


def _broken_links(pattern: str) -> list[str]:
    """Local symbolic links ``pattern`` names that lead nowhere (dangling, or a loop).

    Beam's local listing drops every entry it cannot ``stat``, so these would vanish from the job without
    a trace; listed here, they become inputs and then dead letters with their reason.
    """
    if has_scheme(pattern):
        return []
    if not _GLOB_CHARS.search(pattern):
        if os.path.islink(pattern) and not os.path.exists(pattern):
            return [pattern]
        if not os.path.isdir(pattern):
            return []
        names: Iterator[str] = (os.path.join(d, f) for d, _, files in os.walk(pattern) for f in files)
    else:
        names = iter(glob.glob(pattern, recursive=True))
    return sorted(n for n in names if os.path.islink(n) and not os.path.exists(n))


def expand_paths(patterns: Sequence[str]) -> list[str]:
    """Files named by ``patterns``: files, directories (every file below) and globs; sorted, unique.

    Local dangling links and link loops are kept (:func:`_broken_links`), so that they become dead letters.

    Raises:
        DatasetError: a pattern matches nothing (a typo would otherwise give an empty corpus).
    """
    found: dict[str, None] = {}
    for pattern in patterns:
        if not _GLOB_CHARS.search(pattern) and not has_scheme(pattern) and os.path.isfile(pattern):
            found.setdefault(pattern, None)  # a plain local file: no listing (matching compiles a regex per path)
            continue
        broken = _broken_links(pattern)
        if broken and not _GLOB_CHARS.search(pattern) and not os.path.isdir(pattern):
            found.setdefault(pattern, None)  # one link named on its own
            continue
        query = pattern
        if not _GLOB_CHARS.search(pattern) and (
            pattern.endswith("/") or (not has_scheme(pattern) and os.path.isdir(pattern))
        ):
            query = FileSystems.join(pattern.rstrip("/"), "**")
        try:
            result = FileSystems.match([query])[0]
        except BeamIOError as exc:
            raise DatasetError(f"--input {pattern!r}: cannot list it ({exc})") from None
        paths = sorted(m.path for m in result.metadata_list)
        if not has_scheme(pattern):
            paths = sorted({*(p for p in paths if not os.path.isdir(p)), *broken})
        if not paths:
            raise DatasetError(f"--input {pattern!r} matches no file")
        for p in paths:
            found.setdefault(p, None)
    return list(found)


def check_input_path(path: str) -> int | None:
    """Check an input before it is opened; returns the size of a local file, None for a remote one.

    A name that is not valid UTF-8 (listed with ``os.fsdecode``'s surrogates) cannot be an example id or
    a Parquet ``path`` value; a local path must be a regular file (a FIFO would block the job forever)
    and not a dangling link or a link loop. Paths with a scheme (``gs://``, ``s3://``) are not stat-ed.

    Raises:
        FileNameError, SpecialFileError, BrokenLinkError; FileNotFoundError, PermissionError (OSError).
    """
    from rnnstream.pipeline.audio_io import check_regular_file, display_path

    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise FileNameError(
            f"{display_path(path)}: the file name is not valid UTF-8 (its undecodable bytes shown as \\xNN); "
            "example ids and dataset paths are UTF-8 text, so rename the file"
        ) from None
    if has_scheme(path):
        return None
    return check_regular_file(path)


def read_manifest(path: str) -> list[InputRecord]:
    """Rows of a CSV or JSONL manifest as records; relative paths resolve against the manifest's folder.

    The text is UTF-8, with or without a byte-order mark (``utf-8-sig``: spreadsheet exports write one).

    Raises:
        DatasetError: unreadable, no ``path`` column, an empty path, or a repeated path.
    """
    try:
        with FileSystems.open(path) as fh:
            text = fh.read().decode("utf-8-sig")
    except (BeamIOError, OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"manifest {path!r}: cannot read it ({exc})") from None
    rows: list[dict[str, Any]]
    if path.lower().endswith((".jsonl", ".json", ".ndjson")):
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"manifest {path!r} line {n}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"manifest {path!r} line {n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    base = os.path.dirname(path)
    records: list[InputRecord] = []
    seen: set[str] = set()
    for n, row in enumerate(rows, start=1):
        if "path" not in row:
            raise DatasetError(f"manifest {path!r} row {n} has no 'path' column (columns: {sorted(row)})")
        p = str(row["path"] or "").strip()
        if not p:
            raise DatasetError(f"manifest {path!r} row {n}: empty path")
        if not has_scheme(p) and not os.path.isabs(p):
            p = FileSystems.join(base, p) if base else p
        if not has_scheme(p):
            p = os.path.normpath(p)
        if p in seen:
            raise DatasetError(f"manifest {path!r} row {n}: path {p!r} is listed twice")
        seen.add(p)
        label = row.get("label")
        label = None if label is None or label == "" else str(label)
        meta = {k: v for k, v in row.items() if k not in ("path", "label") and k is not None}
        records.append(InputRecord(path=p, label=label, metadata=meta))
    return records


def _norm(path: str) -> str:
    return path if has_scheme(path) else os.path.normpath(os.path.abspath(path))


def list_inputs(
    inputs: Sequence[str] | None,
    manifest: str | None = None,
    label_pattern: str | None = None,
) -> list[InputRecord]:
    """The job's inputs with labels and metadata attached.

    * ``manifest`` only: its rows are the inputs.
    * ``inputs`` (files, directories, globs) with a manifest: labels/metadata from the manifest row of the
      same path; files it does not list get no label.
    * ``label_pattern``: searched in the file name; group ``label`` is the label and other named groups
      metadata (overriding manifest values). A file name it does not match keeps no label; the
      featurize job turns it into a dead letter (see ``_FeaturizeFn``).

    Raises:
        DatasetError: nothing to read, a pattern that matches nothing, a bad manifest.
        ConfigError: the regex does not compile.
    """
    if label_pattern is not None:
        compile_label_pattern(label_pattern)
    if not inputs and not manifest:
        raise DatasetError("no inputs: give --input PATH (repeatable) and/or --manifest FILE")
    rows = read_manifest(manifest) if manifest else []
    if inputs:
        by_path = {_norm(r.path): r for r in rows}
        records = []
        for p in expand_paths(inputs):
            row = by_path.get(_norm(p)) if by_path else None  # no manifest: no per-path normalisation
            records.append(InputRecord(path=p, label=row.label if row else None, metadata=dict(row.metadata) if row else {}))
    else:
        if not rows:
            raise DatasetError(f"manifest {manifest!r} lists no inputs")
        records = rows
    return records


def compile_label_pattern(pattern: str) -> re.Pattern[str]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--label-pattern {pattern!r} is not a valid regex: {exc}") from None
    if "label" not in regex.groupindex:
        raise ConfigError(f"--label-pattern {pattern!r} has no named group 'label', e.g. (?P<label>...)")
    return regex


def apply_label_pattern(record: InputRecord, regex: re.Pattern[str] | None) -> InputRecord:
    """The record with label/metadata from the file name (``regex.search`` on the base name).

    Raises:
        DatasetError: the name does not match (the input's label would be unknown).
    """
    if regex is None:
        return record
    name = record.path.rstrip("/").rsplit("/", 1)[-1]
    match = regex.search(name)
    if match is None:
        raise DatasetError(f"{record.path}: file name {name!r} does not match --label-pattern {regex.pattern!r}")
    groups = {k: v for k, v in match.groupdict().items() if v is not None}
    label = groups.pop("label", None)
    return InputRecord(path=record.path, label=label, metadata={**record.metadata, **groups})


