"""How an ingest names its input files: paths, or pseudonymous labels in de-identified projects.

Sites often name folders and files after the patient (``DOE^JANE_MRN123456/``), so a
de-identified project never stores or prints a source path.  Each file an ingest has to report
(rejected, not DICOM, part of a failed volume) is named instead by

* its position in the ingest's walk: ``file 17 of 240`` (folders sorted, as the ingest reads
  them);
* a keyed reference: 16 hex digits of HMAC-SHA256 of its path relative to the folder given to
  the ingest, under the project's de-identification secret
  (:meth:`~voxelhub.dicom.deid.Deidentifier.source_ref`);
* its SOPInstanceUID pseudonym, when the header could be read that far.

The same folder ingested again with the same secret gives the same labels, and
:func:`locate` (``voxelhub locate``) turns references back into paths for whoever holds the
secret.  Reasons taken from exception messages (pydicom's may quote the file) have every path,
and every folder or file name of the source, replaced by ``<path withheld>``.  Identifiable
projects keep their paths as given.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from voxelhub import config
from voxelhub.dicom.index import ZIP_SEP, iter_sources
from voxelhub.errors import DeidentificationError, VoxelHubError

WITHHELD = "<path withheld>"
"""What replaces a path or a folder/file name inside a reason."""

_REF = re.compile(r"\b[0-9a-f]{16}\b")
_PATH_TOKEN = re.compile(r"""[^\s'"`()\[\]{}<>,;]*[/\\][^\s'"`()\[\]{}<>,;]*""")
"""Anything path-like (a token with a slash) inside a message."""
_MIN_NAME = 3
"""Shorter folder/file names are left in messages (they would hit unrelated words and
numbers); they cannot hold a name or an MRN."""


def withheld_note(project: str) -> str:
    """The sentence reports carry where paths would be."""
    return f"source paths withheld: project {project} is de-identified"


def relative_source(source: str, roots: Iterable[str]) -> str:
    """``source`` relative to the ingest root it was found under (``/`` separators).

    A folder root gives the path below it; a file or zip root gives its own name (then
    ``!/member`` for a zip member).  Sources under no root are named by their basename.
    """
    archive, sep, member = source.partition(ZIP_SEP)
    absolute = os.path.abspath(archive)
    for root in roots:
        root_abs = os.path.abspath(root)
        if os.path.isdir(root_abs):
            try:
                rel = os.path.relpath(absolute, root_abs)
            except ValueError:  # another drive (Windows)
                continue
            if rel == os.curdir or rel.startswith(os.pardir):
                continue
        elif absolute == root_abs:
            rel = os.path.basename(root_abs)
        else:
            continue
        return rel.replace(os.sep, "/") + sep + member
    return os.path.basename(absolute) + sep + member


@dataclass
class SourceNames:
    """Names input files for reports: as given, or by label when ``deid`` is set.

    Parameters
    ----------
    roots
        The folders, files and zip archives given to the ingest.
    project
        The project's name (for the note that paths were withheld).
    deid
        The project's :class:`~voxelhub.dicom.deid.Deidentifier`, or None for an identifiable
        project (paths are kept).
    """

    roots: list[str]
    project: str
    deid: Any = None

    def __post_init__(self) -> None:
        self._positions: dict[str, int] = {}
        self._total = 0
        self._sop_uids: dict[str, str] = {}

    @property
    def withheld(self) -> bool:
        """True when paths are withheld (the project is de-identified)."""
        return self.deid is not None

    def prepare(self, sources: Iterable[str], sop_uids: Mapping[str, str] | None = None) -> None:
        """Number the files to be named, by walking the roots again (names only).

        ``sop_uids`` maps sources to their original SOPInstanceUIDs where known.
        """
        if not self.withheld:
            return
        wanted = set(sources) - set(self._positions)
        if sop_uids:
            self._sop_uids.update({s: u for s, u in sop_uids.items() if u})
        if not wanted:
            return
        total = 0
        positions: dict[str, int] = {}
        for total, source in enumerate(iter_sources(self.roots), start=1):
            if source in wanted:
                positions[source] = total
        self._total = total
        self._positions.update(positions)

    def ingest_roots(self) -> list[str]:
        """What the report stores as the ingest's paths."""
        if not self.withheld:
            return list(self.roots)
        n = len(self.roots)
        note = withheld_note(self.project)
        return [f"input {i} of {n} ({note})" for i in range(1, n + 1)]

    def name(self, source: str) -> str:
        """The path as given, or ``file 17 of 240, ref 3f9a…, SOP 2.25.…`` when withheld."""
        if not self.withheld:
            return source
        position = self._positions.get(source)
        where = f"file {position} of {self._total}" if position else "file"
        ref = self.deid.source_ref(relative_source(source, self.roots))
        label = f"{where}, ref {ref}"
        uid = self._sop_uids.get(source)
        if uid:
            label += f", SOP {self.deid.map_uid(uid)}"
        return label

    def reason(self, text: str, source: str | None = None) -> str:
        """``text`` with every path and every name of ``source`` (and of the roots) withheld."""
        if not self.withheld or not text:
            return text
        literal: set[str] = set()
        names: set[str] = set()
        for path in ([source] if source else []) + list(self.roots):
            archive, _, member = path.partition(ZIP_SEP)
            literal.update({path, archive, os.path.abspath(archive), member})
            rel = relative_source(path, self.roots) if path == source else ""
            names.update(part for part in re.split(r"[/\\!]", rel) if part)
            names.add(os.path.basename(os.path.abspath(archive)))
            names.update(part for part in member.split("/") if part)
        for value in sorted((v for v in literal if v), key=len, reverse=True):
            text = text.replace(value, WITHHELD)
        text = _PATH_TOKEN.sub(WITHHELD, text)
        for name in sorted((n for n in names if len(n) >= _MIN_NAME), key=len, reverse=True):
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", WITHHELD, text)
        return text


@dataclass(frozen=True)
class Located:
    """An input file found for a reference: where it is and how the report labelled it."""

    ref: str
    position: int
    total: int
    path: str


def locate(
    paths: Iterable[str | os.PathLike[str]], project: str, refs: Iterable[str]
) -> list[Located]:
    """The files under ``paths`` whose keyed reference is one of ``refs``.

    A curator who holds the project's secret (``$VOXELHUB_SECRETS_DIR/<project>.key``) runs
    this on the folders given to the ingest to turn the labels of a de-identified report
    (``file 17 of 240, ref 3f9a…``) back into paths.  ``refs`` may be bare 16-hex-digit
    references or whole labels.

    Raises
    ------
    DeidentificationError
        The project has no secret here (it was made elsewhere, or is not de-identified).
    VoxelHubError
        No reference was given.
    """
    from voxelhub.dicom.deid import Deidentifier, load_or_create_secret

    wanted = {m for r in refs for m in _REF.findall(r)}
    if not wanted:
        raise VoxelHubError("give references as 16 hex digits (or the labels that contain them)")
    key = config.secrets_dir() / f"{project}.key"
    if not key.is_file():
        raise DeidentificationError(
            f"no de-identification secret for project {project!r} at {key}: references can "
            "only be resolved where the project's secret is (or with $VOXELHUB_SECRETS_DIR)"
        )
    deid = Deidentifier(load_or_create_secret(key))
    roots = [os.fspath(p) for p in paths]
    found: list[Located] = []
    total = 0
    for total, source in enumerate(iter_sources(roots), start=1):
        ref = deid.source_ref(relative_source(source, roots))
        if ref in wanted:
            found.append(Located(ref, total, 0, source))
    return [Located(f.ref, f.position, total, f.path) for f in found]
