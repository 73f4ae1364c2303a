"""``voxelhub`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from voxelhub.errors import VoxelHubError


def _ingest(args: argparse.Namespace) -> int:
    from voxelhub.ingest import ingest

    report = ingest(
        args.paths,
        args.store,
        project=args.project,
        deidentify=True if args.deidentify else None,
        catalog_url=args.catalog_url,
        workers=args.workers,
        progress=not args.quiet,
        encrypt=True if args.encrypt else None,
        key_file=args.key_file,
    )
    print(report.summary())
    return report.exit_code


def _pull(args: argparse.Namespace) -> int:
    from voxelhub.dicomweb import Credentials, StudyQuery, pull

    extra = {}
    for item in args.filter:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise VoxelHubError(f"--filter takes KEYWORD=VALUE, not {item!r}")
        extra[key] = value
    query = StudyQuery(
        patient_id=args.patient_id,
        study_date=args.study_date,
        modality=args.modality,
        accession=args.accession,
        study_uid=args.study_uid,
        extra=extra,
    )
    if args.list:  # on the hub (--store is the data service) the service asks the server
        from voxelhub.dicomweb.service_pull import find

        credentials = Credentials.resolve(user=args.user)
        studies, _ = find(args.url, args.store, query, project=args.project,
                          credentials=credentials, max_studies=args.max_studies)  # fmt: skip
        for study in studies:
            print(study.line())
        print(f"{len(studies)} study(ies); pull one with --study-uid UID")
        return 0
    report = pull(
        args.url,
        args.store,
        query,
        project=args.project,
        deidentify=True if args.deidentify else None,
        credentials=Credentials.resolve(user=args.user),
        workers=args.workers,
        staging=args.staging,
        catalog_url=args.catalog_url,
        max_studies=args.max_studies,
        progress=not args.quiet,
        audit_log=args.audit_log,
    )
    print(report.summary())
    return report.exit_code


def _cohort(args: argparse.Namespace) -> int:
    import json

    from voxelhub.cohort import export_cohort, import_cohort

    options = json.loads(os.environ.get("VOXELHUB_COHORT_STORAGE_OPTIONS") or "{}")
    if args.cohort_command == "export":
        done = export_cohort(
            args.store,
            args.target,
            project=args.project,
            modality=args.modality,
            text=args.text,
            volumes=args.volume or None,
            site=args.site,
            catalog_url=args.catalog_url,
            storage_options=options,
        )
        print(
            f"exported {done.volumes} volume(s), {done.objects} object(s) to {done.target}; "
            f"manifest sha256 {done.manifest_sha256} (tell the receiving site)"
        )
        return 0
    imported = import_cohort(
        args.package,
        args.store,
        project=args.project,
        catalog_url=args.catalog_url,
        storage_options=options,
    )
    print(imported.summary())
    return 0


def _list(args: argparse.Namespace) -> int:
    from voxelhub import open_catalog

    cat = open_catalog(args.store, catalog_url=args.catalog_url)
    df = cat.series(modality=args.modality, text=args.text, project=args.project)
    cols = [
        "volume_uid",
        "project",
        "modality",
        "description",
        "split",
        "slices",
        "rows",
        "columns",
        "flags",
    ]
    print(df[cols].to_string(index=False) if not df.empty else "no volumes")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from voxelhub import open_catalog

    cat = open_catalog(args.store, catalog_url=args.catalog_url)
    for uid in args.uids:
        gone = cat.delete_volume(uid)
        print(
            f"deleted {gone.volume_uid} (project {gone.project}, {gone.store_path}, labels "
            f"included; {gone.feature_rows} feature rows)"
        )
    return 0


def _project(args: argparse.Namespace) -> int:
    from voxelhub import open_catalog

    cat = open_catalog(args.store, catalog_url=args.catalog_url)
    if args.deidentify is None:
        settings = cat.project_settings(args.name)
    else:
        settings = cat.set_project_settings(args.name, deidentify=args.deidentify)
    state = f"de-identified ({settings.profile})" if settings.deidentify else "identifiable"
    lock = " (fixed while it holds volumes)" if settings.locked else ""
    print(f"project {settings.name}: {state}{lock}; {settings.volumes} volume(s)")
    return 0


def _upload(args: argparse.Namespace) -> int:
    from voxelhub import open_catalog
    from voxelhub.uploads import UploadState

    cat = open_catalog(args.store)
    if not hasattr(cat, "upload"):
        print("voxelhub: error: uploads go to the hub's data service: --store is its URL",
              file=sys.stderr)  # fmt: skip
        return 2

    def say(report: Any) -> None:
        print(f"{report.state.value}: {report.checked}/{report.files} file(s) checked",
              file=sys.stderr)  # fmt: skip

    report = cat.upload(args.path, project=args.project, on_progress=say)
    print(report.summary())
    if report.state is UploadState.FAILED:
        return 2
    return 1 if report.rejected else 0


def export_path(uid: str, output: str | None) -> Path:
    """Where ``voxelhub export`` writes: ``output``, ``output/<uid>.nii.gz`` for a folder, or
    ``<export_dir>/<uid>.nii.gz`` (the user's own folder, created 0700) when none is given."""
    from voxelhub import config

    if output is None:
        folder = config.export_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return folder / f"{uid}.nii.gz"
    path = Path(output).expanduser()
    return path / f"{uid}.nii.gz" if path.is_dir() else path


def _export(args: argparse.Namespace) -> int:
    from voxelhub import open_catalog
    from voxelhub.store.export import export_nifti

    cat = open_catalog(args.store, catalog_url=args.catalog_url)
    volume = cat.open_series(args.uid)
    done = export_nifti(volume, export_path(args.uid, args.output))
    for path in (done.image, done.sidecar, done.bval, done.bvec):
        if path is not None:
            print(path)
    return 0


def _locate(args: argparse.Namespace) -> int:
    from voxelhub.source_names import locate

    found = locate(args.paths, args.project, args.ref)
    for item in found:
        print(f"ref {item.ref}: file {item.position} of {item.total}: {item.path}")
    if not found:
        print("no file under the given paths has these references", file=sys.stderr)
    return 0 if found else 1


def _keys(args: argparse.Namespace) -> int:
    """voxelhub keys rotate|reencrypt|retire: a project's data key versions (issue 13)."""
    from voxelhub import open_catalog
    from voxelhub.catalog import Catalog
    from voxelhub.store.encryption import open_store_keys
    from voxelhub.store.reencrypt import Outcome, reencrypt_project, retire_old_keys

    cat = open_catalog(args.store, catalog_url=args.catalog_url)
    if not isinstance(cat, Catalog):
        raise VoxelHubError(f"keys runs where the store is, not through {cat.url}")
    try:
        ring = open_store_keys(cat.location, args.key_file)
        if args.keys_command == "rotate":
            print(f"project {args.project}: new data key {ring.rotate(args.project)}", flush=True)
        if args.keys_command == "reencrypt" or getattr(args, "reencrypt", False):
            done = reencrypt_project(
                cat,
                args.project,
                ring,
                progress=lambda step: print(
                    f"{step.done}/{step.total} {step.volume_uid}: {step.outcome.value}", flush=True
                ),
                linger_seconds=args.linger,
            )
            print(
                f"{done.count(Outcome.REWRITTEN)} volume(s) re-encrypted with data key "
                f"{done.key_id}, {done.count(Outcome.ALREADY_CURRENT)} already were; "
                f"{len(done.removed)} old tree(s) removed; {done.resealed_rows} catalog row(s) "
                f"resealed",
                flush=True,
            )
        if args.keys_command == "retire" or getattr(args, "retire", False):
            retired = retire_old_keys(cat, args.project, ring)
            print(f"retired data key(s): {', '.join(retired) or 'none'}")
    finally:
        cat.close()
    return 0


def _fsck(args: argparse.Namespace) -> int:
    from voxelhub import open_catalog
    from voxelhub.catalog import Catalog
    from voxelhub.fsck import check_store

    cat = open_catalog(args.store, catalog_url=args.catalog_url)
    if not isinstance(cat, Catalog):
        raise VoxelHubError(f"fsck runs where the store is, not through {cat.url}")
    check = check_store(
        cat.location,
        cat,
        repair=args.repair,
        verify=args.verify,
        min_age_seconds=args.min_age,
        key_file=args.key_file,
    )
    for kind in ("missing", "corrupt", "unlisted", "temporaries", "removed"):
        for path in getattr(check, kind):
            print(f"{kind}: {path}")
    print(check.summary())
    return 0 if check.consistent else 1


def _audit_verify(args: argparse.Namespace) -> int:
    from voxelhub.audit import checkpoints_path_from, log_path_from, verify

    result = verify(log_path_from(args.log), checkpoints_path_from(args.checkpoints))
    print(result.message)
    return 0 if result.ok else 1


def _audit_query(args: argparse.Namespace) -> int:
    from voxelhub.audit import format_table, log_path_from, query

    patient: list[str] | None = [args.patient] if args.patient else None
    if args.patient and args.store:  # sealed projects' audits name the patient by blind index
        from voxelhub import open_catalog
        from voxelhub.catalog import Catalog
        from voxelhub.store.encryption import open_store_keys, use_keys

        cat = open_catalog(args.store)
        if not isinstance(cat, Catalog):
            raise VoxelHubError(
                f"audit query --store runs where the store is, not through {cat.url}"
            )
        if cat.sealed_projects():
            use_keys(open_store_keys(cat.location, args.key_file))
        patient = cat.audit_names(args.patient, project=args.project)
        cat.close()
    records = query(
        log_path_from(args.log),
        user=args.user,
        patient=patient,
        series=args.series,
        project=args.project,
        since=args.since,
        action=args.action,
        decision=args.decision,
    )
    if args.json:
        for record in records:
            print(record.to_json())
    else:
        print(format_table(records))
    return 0


def _audit_checkpoint(args: argparse.Namespace) -> int:
    from voxelhub.audit import checkpoint, checkpoints_path_from, log_path_from

    target = checkpoints_path_from(args.checkpoints, required=True)
    assert target is not None
    mark = checkpoint(log_path_from(args.log), target)
    print(f"checkpoint: {mark.log} at seq {mark.seq}, hash {mark.hash} -> {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxelhub", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "ingest",
        help="ingest DICOM folders, files or zip archives into a store",
        description="Ingest DICOM folders, files or zip archives into a store.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "exit status:\n"
            "  0  every DICOM image was ingested, or was already there unchanged\n"
            "  1  some files or volumes were rejected or failed; the rest was written (the\n"
            "     summary groups the reasons, the catalog lists every file)\n"
            "  2  nothing was written although DICOM files were found, none was found, or\n"
            "     the command itself failed"
        ),
    )
    p.add_argument("paths", nargs="+", help="folders, files or .zip archives")
    p.add_argument("--store", required=True, help="store path or URL")
    p.add_argument("--project", default="default", help="project name (default: default)")
    p.add_argument(
        "--deidentify",
        action="store_true",
        help="apply the DICOM PS3.15 Basic Profile (projects keep this setting)",
    )
    p.add_argument(
        "--encrypt",
        action="store_true",
        help="encrypt the project at rest (chunks and PHI attributes; only while it is empty)",
    )
    p.add_argument("--key-file", default=None, help="master key file (default: $VOXELHUB_KEY_FILE)")
    p.add_argument("--catalog-url", default=None, help="SQLAlchemy URL (default: SQLite in store)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_ingest)

    p = sub.add_parser(
        "pull",
        help="pull studies from a DICOMweb server (QIDO-RS query, WADO-RS retrieval) into a "
        "project; resumable",
        description="Find studies on a DICOMweb server with QIDO-RS and retrieve their "
        "instances with WADO-RS in parallel streams; every instance is checked (truncated or "
        "corrupt ones are rejected with the reason), staged atomically and ingested like "
        "`voxelhub ingest` (de-identified when the project is). An interrupted pull started "
        "again with the same arguments fetches only what is missing. Credentials: --user with "
        "$VOXELHUB_DICOMWEB_PASSWORD, or $VOXELHUB_DICOMWEB_TOKEN (bearer); never printed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "exit status:\n"
            "  0  every instance the query selects is in the store\n"
            "  1  some instances were rejected (reasons listed) or refused by the ingest\n"
            "  2  nothing was stored, or the pull failed: server unreachable, HTTP 401/403/404,\n"
            "     no study matched, or instances could not be fetched (run it again to resume)"
        ),
    )
    p.add_argument("url", help="the DICOMweb root, e.g. https://pacs.example.org/dicom-web")
    p.add_argument("--store", required=True, help="store path or URL")
    p.add_argument("--project", default="default", help="project name (default: default)")
    p.add_argument("--deidentify", action="store_true", help="apply the DICOM PS3.15 Basic Profile")
    p.add_argument("--patient-id", default=None, help="PatientID")
    p.add_argument("--study-date", default=None, help="YYYYMMDD or YYYYMMDD-YYYYMMDD")
    p.add_argument(
        "--modality", default=None, help="studies with this modality; only its series pulled"
    )
    p.add_argument("--accession", default=None, help="AccessionNumber")
    p.add_argument("--study-uid", default=None, help="StudyInstanceUID")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEYWORD=VALUE",
        help="any other study attribute, e.g. PatientName=DOE*; repeatable",
    )
    p.add_argument(
        "--list", action="store_true", help="only list the studies the query finds (QIDO-RS)"
    )
    p.add_argument("--workers", type=int, default=4, help="parallel WADO-RS streams [4]")
    p.add_argument("--max-studies", type=int, default=50, help="refuse a query matching more [50]")
    p.add_argument(
        "--staging",
        default=None,
        help="where instances wait for ingest [$VOXELHUB_PULL_STAGING or ~/.cache/voxelhub/pulls]",
    )
    p.add_argument("--user", default=None, help="basic-auth user [$VOXELHUB_DICOMWEB_USER]")
    p.add_argument(
        "--audit-log", default=None, help="record the pull (dicom.pull) in this audit trail"
    )
    p.add_argument("--catalog-url", default=None, help="SQLAlchemy URL (default: SQLite in store)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_pull)

    p = sub.add_parser(
        "cohort",
        help="export a de-identified selection as a checksummed package, or import one",
        description="Cohorts between sites. export: the volumes of a de-identified project "
        "selected by a catalog query, with their label images and feature rows, a manifest "
        "with the SHA-256 of every object, the de-identification profile and the provenance, "
        "to a new folder or s3:// prefix ($VOXELHUB_COHORT_STORAGE_OPTIONS: fsspec options as "
        "JSON). import: every checksum verified first, identifiable data refused, idempotent.",
    )
    cohort = p.add_subparsers(dest="cohort_command", required=True)
    q = cohort.add_parser("export", help="write a package from a de-identified project")
    q.add_argument("target", help="a new folder or an empty s3://bucket/prefix")
    q.add_argument("--store", required=True)
    q.add_argument("--project", required=True, help="a de-identified project")
    q.add_argument("--modality", default=None)
    q.add_argument("--text", default=None, help="free-text search on descriptions")
    q.add_argument("--volume", action="append", default=[], help="only these UIDs; repeatable")
    q.add_argument("--site", default=None, help="this site's pseudonym [$VOXELHUB_SITE]")
    q.add_argument("--catalog-url", default=None)
    q.set_defaults(func=_cohort)
    q = cohort.add_parser("import", help="verify a package and import it into a project")
    q.add_argument("package", help="the package's folder or s3:// prefix")
    q.add_argument("--store", required=True)
    q.add_argument("--project", required=True, help="created de-identified if new")
    q.add_argument("--catalog-url", default=None)
    q.set_defaults(func=_cohort)

    p = sub.add_parser("list", help="list the volumes in a store")
    p.add_argument("--store", required=True)
    p.add_argument("--catalog-url", default=None)
    p.add_argument("--modality", default=None)
    p.add_argument("--project", default=None)
    p.add_argument("--text", default=None, help="free-text search on descriptions")
    p.set_defaults(func=_list)

    store = os.environ.get("VOXELHUB_STORE")  # in a hub kernel: the data service
    p = sub.add_parser(
        "delete",
        help="remove volumes (labels and feature rows included) from the catalog and the store",
        description="Remove volumes from the catalog, then their files (labels included) and "
        "stored feature rows. On the hub it goes through the data service: curators of the "
        "volume's project only, audited.",
    )
    p.add_argument("uids", nargs="+", help="volume UIDs (or SeriesInstanceUIDs not split)")
    p.add_argument("--store", default=store, required=not store, help="[$VOXELHUB_STORE]")
    p.add_argument("--catalog-url", default=None)
    p.set_defaults(func=_delete)

    p = sub.add_parser(
        "project",
        help="show or set a project's de-identification (only while it holds no volumes)",
    )
    p.add_argument("name", help="project name (a new one is created with the setting)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--deidentify", dest="deidentify", action="store_true", default=None)
    mode.add_argument("--identifiable", dest="deidentify", action="store_false")
    p.add_argument("--store", default=store, required=not store, help="[$VOXELHUB_STORE]")
    p.add_argument("--catalog-url", default=None)
    p.set_defaults(func=_project)

    p = sub.add_parser(
        "upload",
        help="send a zip or a folder of DICOM files to the data service, into a project you curate",
        description="The service checks every file and ingests the good ones (de-identified "
        "when the project is), then deletes the upload. Prints the report; exits 0 all "
        "ingested, 1 some files rejected, 2 nothing ingested.",
    )
    p.add_argument("path", help="a .zip file or a folder (zipped on the fly)")
    p.add_argument("--project", required=True, help="the project (you are one of its curators)")
    p.add_argument("--store", default=store, required=not store, help="[$VOXELHUB_STORE]")
    p.set_defaults(func=_upload)

    p = sub.add_parser(
        "export",
        help="export a volume as NIfTI (3-D or 4-D) with its BIDS sidecar (.json) and, for "
        "diffusion, .bval/.bvec in FSL's convention",
    )
    p.add_argument("uid", help="volume UID (or an unsplit SeriesInstanceUID)")
    p.add_argument(
        "output",
        nargs="?",
        default=None,
        help="output .nii or .nii.gz, or a folder (default: $VOXELHUB_EXPORT_DIR or "
        "~/voxelhub-exports/UID.nii.gz; files are created readable by you only, or by the "
        "folder's group in a setgid project folder)",
    )
    p.add_argument("--store", required=True)
    p.add_argument("--catalog-url", default=None)
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "locate",
        help="find the input files behind the labels of a de-identified ingest report",
        description="A de-identified project's ingest report names files by position and a "
        "keyed reference ('file 17 of 240, ref 3f9a...'), never by path. Run this on the "
        "folders given to the ingest, where the project's secret is, to get the paths back.",
        epilog="exit status: 0 some file found, 1 none, 2 no secret for the project",
    )
    p.add_argument("paths", nargs="+", help="the folders, files or .zip archives ingested")
    p.add_argument("--project", required=True, help="the de-identified project")
    p.add_argument(
        "--ref",
        action="append",
        required=True,
        help="a reference (16 hex digits) or a whole label; may be repeated",
    )
    p.set_defaults(func=_locate)

    p = sub.add_parser("fsck", help="check a store against its catalog; --repair collects garbage")
    p.add_argument("--store", required=True)
    p.add_argument("--catalog-url", default=None)
    p.add_argument("--repair", action="store_true", help="remove leftovers of crashed ingests")
    p.add_argument("--verify", action="store_true", help="re-read every volume's checksum (slow)")
    p.add_argument(
        "--key-file", default=None, help="master key file of encrypted projects (for --verify)"
    )
    p.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        help="only remove leftovers older than this many seconds (default 3600)",
    )
    p.set_defaults(func=_fsck)

    p = sub.add_parser(
        "audit",
        help="check and search the data service's audit log (admins)",
        description="Check and search the data service's tamper-evident audit log. The log is "
        "readable only by the data service account and root. Paths default to "
        "$VOXELHUB_AUDIT_LOG and $VOXELHUB_AUDIT_CHECKPOINTS.",
    )
    audit = p.add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser(
        "verify",
        help="check the hash chain (and the checkpoints)",
        epilog="exit status: 0 intact, 1 tampered or damaged (the message names the line and "
        "seq), 2 the log could not be read",
    )
    p.add_argument("--log", default=None, help="audit log (default: $VOXELHUB_AUDIT_LOG)")
    p.add_argument(
        "--checkpoints",
        default=None,
        help="checkpoints file (default: $VOXELHUB_AUDIT_CHECKPOINTS; without one a cut-off "
        "tail cannot be detected)",
    )
    p.set_defaults(func=_audit_verify)
    p = audit.add_parser("query", help="print the records matching every filter given")
    p.add_argument("--log", default=None, help="audit log (default: $VOXELHUB_AUDIT_LOG)")
    p.add_argument("--user", default=None)
    p.add_argument("--patient", default=None, help="patient ID (a pseudonym where de-identified)")
    p.add_argument(
        "--store",
        default=None,
        help="store whose catalog turns --patient into the names the trail uses for it in "
        "encrypted identifiable projects (their blind index; needs the master key file)",
    )
    p.add_argument("--key-file", default=None, help="master key file (default: $VOXELHUB_KEY_FILE)")
    p.add_argument("--series", default=None, help="volume UID or series UID")
    p.add_argument("--project", default=None)
    p.add_argument("--since", default=None, help="ISO-8601 time (UTC unless an offset is given)")
    p.add_argument("--action", default=None, help="e.g. volume.read, catalog.series")
    p.add_argument("--decision", default=None, choices=["allow", "deny"])
    p.add_argument("--json", action="store_true", help="one JSON record per line")
    p.set_defaults(func=_audit_query)
    p = audit.add_parser(
        "checkpoint",
        help="append the log's head (seq, hash) to the checkpoints file (run as root/the hub)",
    )
    p.add_argument("--log", default=None, help="audit log (default: $VOXELHUB_AUDIT_LOG)")
    p.add_argument(
        "--checkpoints",
        default=None,
        help="checkpoints file (default: $VOXELHUB_AUDIT_CHECKPOINTS)",
    )
    p.set_defaults(func=_audit_checkpoint)

    p = sub.add_parser(
        "backup",
        help="encrypted, incremental backups of a store (and the hub's state) with restic",
        description="Back up what a site needs to come back (the store with a consistent copy "
        "of its catalog; with --hub-state the hub database, audit log and checkpoints) to a "
        "restic repository (a folder or s3:...), and restore it into an empty folder. The "
        "repository and its password file default to $VOXELHUB_BACKUP_REPO and "
        "$VOXELHUB_BACKUP_PASSWORD_FILE. Master key files of encrypted stores are never in "
        "these backups: `backup keys` puts them in a separate repository with its own password.",
    )
    backup = p.add_subparsers(dest="backup_command", required=True)
    for name, text in (
        ("init", "create the repository"),
        ("run", "back up a store (and --hub-state)"),
        ("list", "list the snapshots"),
        ("check", "check the repository (--read-data: re-read every pack)"),
        ("restore", "restore a snapshot into an empty folder (store/ and hub/ below it)"),
        ("forget", "drop snapshots the retention policy does not keep, and prune"),
        ("keys", "back up master key files (to a repository of their own)"),
        ("restore-keys", "restore backed-up key files into an empty folder"),
    ):
        q = backup.add_parser(name, help=text)
        q.add_argument("--repo", default=None, help="restic repository [$VOXELHUB_BACKUP_REPO]")
        q.add_argument(
            "--password-file",
            default=None,
            help="file with the repository's password [$VOXELHUB_BACKUP_PASSWORD_FILE]",
        )
        if name == "run":
            q.add_argument("store", help="the store folder")
            q.add_argument("--hub-state", default=None, help="the hub's state folder")
            q.add_argument("--catalog-url", default=None, help="a PostgreSQL catalog (pg_dump)")
            q.add_argument(
                "--key-file", action="append", default=[], help="a master key file to leave out"
            )
        if name == "forget":
            for keep, n in (("last", 7), ("daily", 14), ("weekly", 8), ("monthly", 12)):
                q.add_argument(f"--keep-{keep}", type=int, default=n, help=f"[{n}]; 0: no rule")
        if name == "keys":
            q.add_argument("key_files", nargs="+", help="master key files")
        if name == "restore-keys":
            q.add_argument("--to", required=True, help="an empty (or new) folder")
            q.add_argument("--snapshot", default="latest")
        if name == "check":
            q.add_argument("--read-data", action="store_true")
        if name == "restore":
            q.add_argument("--to", required=True, help="an empty (or new) folder")
            q.add_argument("--snapshot", default="latest")
            q.add_argument(
                "--catalog-url", default=None, help="an empty PostgreSQL database to load into"
            )
        q.set_defaults(func=_backup)

    p = sub.add_parser(
        "keys",
        help="rotate a project's data key and re-encrypt its volumes (encrypted projects)",
        description="Data key versions of an encrypted project. `rotate` makes a new current "
        "key (new writes use it); `--reencrypt` (or `reencrypt`, which also resumes an "
        "interrupted run) rewrites every volume under it while readers keep reading; `retire` "
        "then forgets the old versions, refused while anything still uses one.",
    )
    keys = p.add_subparsers(dest="keys_command", required=True)
    for name, text in (
        ("rotate", "make a new current data key for the project"),
        ("reencrypt", "rewrite the project's volumes under its current data key (resumable)"),
        ("retire", "forget the project's old data key versions once nothing uses them"),
    ):
        q = keys.add_parser(name, help=text)
        q.add_argument("--store", required=True)
        q.add_argument("--catalog-url", default=None)
        q.add_argument("--project", required=True)
        q.add_argument(
            "--key-file", default=None, help="master key file (default $VOXELHUB_KEY_FILE)"
        )
        q.add_argument(
            "--linger",
            type=float,
            default=30.0,
            help="seconds old trees stay for readers that opened them before the switch",
        )
        if name == "rotate":
            q.add_argument("--reencrypt", action="store_true", help="then re-encrypt at once")
            q.add_argument("--retire", action="store_true", help="then retire the old keys")
        q.set_defaults(func=_keys)

    p = sub.add_parser(
        "course",
        help="courses on the hub: student and instructor groups on a project's cohort (admins)",
        description="Courses are hub groups NAME:students and NAME:instructors, with a grader "
        "account grader-NAME, whose members read project P's de-identified data as viewers. "
        "Talks to the hub's REST API with an admin's token from $VOXELHUB_HUB_TOKEN.",
    )
    course = p.add_subparsers(dest="course_command", required=True)
    helps = {
        "create": "create a course, or add a roster to it",
        "show": "print a course's members and project",
        "grader": "start the grader account's server (instructors) and print its URL",
    }
    for cmd in ("create", "show", "grader"):
        q = course.add_parser(cmd, help=helps[cmd])
        q.add_argument("name", help="course name (lower case, e.g. mri101)")
        q.add_argument(
            "--hub", default="http://127.0.0.1:8000", help="the hub's public URL [%(default)s]"
        )
        q.add_argument("--cafile", default=None, help="CA file for a self-signed hub certificate")
        q.add_argument(
            "--data-url",
            default=None,
            help="the data service's URL [<hub>/services/voxelhub-data]",
        )
        if cmd in ("show", "grader"):
            q.set_defaults(func=_course_show if cmd == "show" else _course_grader)
            continue
        q.add_argument("--instructor", action="append", required=True, help="repeatable")
        q.add_argument("--project", required=True, help="the project whose cohort it reads")
        q.add_argument(
            "--roster",
            action="append",
            default=[],
            help="CSV of students (a username column, or names in the first column)",
        )
        q.add_argument("--student", action="append", default=[], help="repeatable")
        q.add_argument(
            "--identifiable",
            action="store_true",
            help="allow a project that is not de-identified (data without patient identifiers)",
        )
        q.set_defaults(func=_course_create)
    return parser


def _course_hub(args: argparse.Namespace) -> tuple[object, str]:
    import os

    from voxelhub.course import CourseError, Hub

    token = os.environ.get("VOXELHUB_HUB_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN")
    if not token:
        raise CourseError("set $VOXELHUB_HUB_TOKEN to a hub admin's API token (/hub/token)")
    hub = Hub(args.hub, token, cafile=args.cafile)
    data_url = args.data_url or args.hub.rstrip("/") + "/services/voxelhub-data"
    return hub, data_url


def _course_create(args: argparse.Namespace) -> int:
    import json

    from voxelhub.course import create_course, read_roster

    hub, data_url = _course_hub(args)
    students = [s for path in args.roster for s in read_roster(path)] + list(args.student)
    course = create_course(
        hub,  # type: ignore[arg-type]
        args.name,
        instructors=args.instructor,
        students=students,
        project=args.project,
        data_url=data_url,
        identifiable=args.identifiable,
    )
    print(json.dumps(course, indent=2))
    if course["created_users"]:
        print(
            f"new hub users: {', '.join(course['created_users'])}; they sign up at /hub/signup "
            f"with these names and an admin approves them",
            file=sys.stderr,
        )
    return 0


def _course_grader(args: argparse.Namespace) -> int:
    from voxelhub.course import start_grader_server

    hub, _ = _course_hub(args)
    print(start_grader_server(hub, args.name))  # type: ignore[arg-type]
    return 0


def _course_show(args: argparse.Namespace) -> int:
    import json

    from voxelhub.course import show_course

    hub, _ = _course_hub(args)
    print(json.dumps(show_course(hub, args.name), indent=2))  # type: ignore[arg-type]
    return 0


def _backup_repository(args: argparse.Namespace) -> Any:
    from voxelhub.backup import BackupError, Repository

    repo = args.repo or os.environ.get("VOXELHUB_BACKUP_REPO")
    password = args.password_file or os.environ.get("VOXELHUB_BACKUP_PASSWORD_FILE")
    if not repo or not password:
        raise BackupError(
            "give --repo and --password-file (or set $VOXELHUB_BACKUP_REPO and "
            "$VOXELHUB_BACKUP_PASSWORD_FILE)"
        )
    return Repository(repo, password)


def _backup(args: argparse.Namespace) -> int:
    from voxelhub.backup import Retention, Sources

    repo = _backup_repository(args)
    if args.backup_command == "init":
        repo.init()
        print(f"initialised restic repository {repo.url}")
    elif args.backup_command == "run":
        hub = Path(args.hub_state) if args.hub_state else None
        keys = tuple(Path(k) for k in args.key_file)
        snap = repo.run(Sources(Path(args.store), hub, args.catalog_url, key_files=keys))
        print(
            f"snapshot {snap.id}: {snap.files_new} new and {snap.files_changed} changed files, "
            f"{snap.bytes_added / 2**20:.1f} MiB added"
        )
    elif args.backup_command == "list":
        for snap in repo.snapshots():
            print(f"{snap.id}  {snap.time}")
    elif args.backup_command == "check":
        repo.check(read_data=args.read_data)
        print(f"{repo.url}: no errors")
    elif args.backup_command == "restore":
        restored = repo.restore(args.to, args.snapshot, catalog_url=args.catalog_url)
        print(f"restored {args.snapshot} into {args.to}: store {restored.store}")
        if restored.hub_state is not None:
            print(f"  hub state {restored.hub_state}")
        if (Path(args.to) / "catalog.pgdump").exists():
            print("  PostgreSQL catalog dump: catalog.pgdump (pg_restore, or --catalog-url)")
    elif args.backup_command == "forget":
        keep = Retention(args.keep_last, args.keep_daily, args.keep_weekly, args.keep_monthly)
        print(f"removed {repo.forget(keep)} snapshots")
    elif args.backup_command == "keys":
        snap = repo.run_keys([Path(k) for k in args.key_files])
        print(f"key snapshot {snap.id}: {len(args.key_files)} key files")
    elif args.backup_command == "restore-keys":
        for path in repo.restore_keys(args.to, args.snapshot):
            print(f"restored key file {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from voxelhub.memory import limit_malloc_arenas

    limit_malloc_arenas()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (VoxelHubError, FileNotFoundError) as exc:
        print(f"voxelhub: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
