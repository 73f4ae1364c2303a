"""``voxelhub`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import logging
import sys

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
    )
    print(report.summary())
    return report.exit_code


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


def _export(args: argparse.Namespace) -> int:
    from voxelhub import open_catalog
    from voxelhub.store.export import export_nifti

    cat = open_catalog(args.store, catalog_url=args.catalog_url)
    volume = cat.open_series(args.uid)
    done = export_nifti(volume, args.output)
    for path in (done.image, done.sidecar, done.bval, done.bvec):
        if path is not None:
            print(path)
    return 0


def _fsck(args: argparse.Namespace) -> int:
    from voxelhub import open_catalog
    from voxelhub.fsck import check_store

    cat = open_catalog(args.store, catalog_url=args.catalog_url)
    check = check_store(
        cat.location, cat, repair=args.repair, verify=args.verify, min_age_seconds=args.min_age
    )
    for kind in ("missing", "corrupt", "unlisted", "temporaries", "removed"):
        for path in getattr(check, kind):
            print(f"{kind}: {path}")
    print(check.summary())
    return 0 if check.consistent else 1


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
    p.add_argument("--catalog-url", default=None, help="SQLAlchemy URL (default: SQLite in store)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_ingest)

    p = sub.add_parser("list", help="list the volumes in a store")
    p.add_argument("--store", required=True)
    p.add_argument("--catalog-url", default=None)
    p.add_argument("--modality", default=None)
    p.add_argument("--project", default=None)
    p.add_argument("--text", default=None, help="free-text search on descriptions")
    p.set_defaults(func=_list)

    p = sub.add_parser(
        "export",
        help="export a volume as NIfTI (3-D or 4-D) with its BIDS sidecar (.json) and, for "
        "diffusion, .bval/.bvec in FSL's convention",
    )
    p.add_argument("uid", help="volume UID (or an unsplit SeriesInstanceUID)")
    p.add_argument("output", help="output .nii or .nii.gz")
    p.add_argument("--store", required=True)
    p.add_argument("--catalog-url", default=None)
    p.set_defaults(func=_export)

    p = sub.add_parser("fsck", help="check a store against its catalog; --repair collects garbage")
    p.add_argument("--store", required=True)
    p.add_argument("--catalog-url", default=None)
    p.add_argument("--repair", action="store_true", help="remove leftovers of crashed ingests")
    p.add_argument("--verify", action="store_true", help="re-read every volume's checksum (slow)")
    p.add_argument(
        "--min-age",
        type=float,
        default=3600.0,
        help="only remove leftovers older than this many seconds (default 3600)",
    )
    p.set_defaults(func=_fsck)
    return parser


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
