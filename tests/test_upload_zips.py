"""The data service's zip checks (extensions/voxelhub_data/uploads.py), without a hub."""

from __future__ import annotations

import stat
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "extensions"))

from voxelhub_data import uploads
from voxelhub_data.uploads import Limits

LIMITS = Limits(max_files=10, max_unpacked_bytes=1 << 20)


def _zip(path: Path, files: dict[str, bytes], *, link: str = "") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    ("files", "link", "error"),
    [
        ({"../x.dcm": b"x"}, "", uploads.UnsafeName),
        ({"a/../../x.dcm": b"x"}, "", uploads.UnsafeName),
        ({"/x.dcm": b"x"}, "", uploads.UnsafeName),
        ({"C:/x.dcm": b"x"}, "", uploads.UnsafeName),
        ({"a.dcm": b"x"}, "l.dcm", uploads.LinkInZip),
        ({f"{i}.dcm": b"x" for i in range(11)}, "", uploads.TooManyFiles),
        ({"big.dcm": b"\0" * ((1 << 20) + 1)}, "", uploads.TooLarge),
        ({}, "", uploads.NotAZip),
    ],
)
def test_the_directory_check_refuses(
    tmp_path: Path, files: dict[str, bytes], link: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        uploads.check_directory(str(_zip(tmp_path / "u.zip", files, link=link)), LIMITS)


def test_garbage_is_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "u.zip").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(uploads.NotAZip, match="not a zip"):
        uploads.check_directory(str(tmp_path / "u.zip"), LIMITS)


def test_unpack_uses_numbered_names_and_catches_a_lying_directory(tmp_path: Path) -> None:
    good = _zip(tmp_path / "good.zip", {"deep/dir/a.dcm": b"a", "b.dcm": b"bb"})
    (tmp_path / "out").mkdir()
    files = uploads.unpack(str(good), str(tmp_path / "out"), LIMITS)
    assert [name for name, _ in files] == ["deep/dir/a.dcm", "b.dcm"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000000.dcm", "000001.dcm"]
    body = bytearray(_zip(tmp_path / "l.zip", {"bomb.dcm": b"\0" * (2 << 20)}).read_bytes())
    central = body.rfind(b"PK\x01\x02")
    body[central + 24 : central + 28] = (1024).to_bytes(4, "little")
    (tmp_path / "lie.zip").write_bytes(bytes(body))
    (tmp_path / "out2").mkdir()
    with pytest.raises(uploads.DamagedMember, match=r"'bomb\.dcm' in the zip"):
        uploads.unpack(str(tmp_path / "lie.zip"), str(tmp_path / "out2"), LIMITS)


def _related(parts: list[bytes], boundary: str = "b0und") -> tuple[bytes, str]:
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary="{boundary}"'


def test_stow_rs_bodies_split_into_their_parts() -> None:
    parts = [b"\x00\r\n--b0un\r\n" * 10, b"", b"DICM" * 100]  # near-boundaries inside data
    body, content_type = _related(parts)
    assert uploads.split_related(body, content_type) == parts


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("application/zip", b"x", "multipart/related"),
        ('multipart/related; type="application/dicom+json"; boundary=x', b"x", "only application"),
        (
            "multipart/related; boundary=x",
            b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--",
            "not application/dicom",
        ),
        ("multipart/related; boundary=x", b"--x\r\n\r\nno end", "closing boundary"),
    ],
)
def test_stow_rs_bad_requests_are_named(content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(uploads.NotStowRequest, match=message):
        uploads.split_related(body, content_type)
