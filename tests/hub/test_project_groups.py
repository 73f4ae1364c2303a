"""Projects as unix groups: store folders 2750 by project group; memberships follow hub groups.

Needs root (groupadd, useradd, chown).  Throwaway unix users and groups with random names are
created and removed; the store is a temp folder (not pytest's 0700 ``tmp_path``: the unix users
must reach it).  Reads are tried as those users with ``runuser``, which sets their groups the way
the spawner does (initgroups).
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.accounts import group_exists

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "extensions"))

from voxelhub_hub import project_groups as pg
from voxelhub_hub.system_users import MANAGED_GROUP, ensure_account, remove_account

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (groupadd, useradd, chown)")


def test_unix_group_names_are_valid_prefixed_and_stable() -> None:
    assert pg.unix_group("lung") == "vhp-lung"
    assert pg.unix_group("lung_2024.ct") == "vhp-lung_2024.ct"
    odd = pg.unix_group("Lung CT 2024")
    assert odd.startswith("vhp-lung-ct-2024-") and odd == pg.unix_group("Lung CT 2024")
    assert pg.unix_group("Lung") != pg.unix_group("lung")  # case matters for hub groups
    long = pg.unix_group("a" * 64)
    assert len(long) <= 32 and long.startswith("vhp-")
    for name in ("root", "sudo", "shadow", "docker"):  # never a system group
        assert pg.unix_group(name) == f"vhp-{name}"
    with pytest.raises(ValueError):
        pg.unix_group("")


def test_secure_store_is_a_no_op_for_remote_or_missing_stores(tmp_path: Path) -> None:
    assert pg.secure_store(None) == {}
    assert pg.secure_store("s3://bucket/store") == {}
    assert pg.secure_store(tmp_path / "missing") == {}


class Box:
    """A throwaway store with two projects and two hub-made unix users."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.projects = (f"pa{tag}", f"pb{tag}")
        self.users = (f"vhta{tag}", f"vhtb{tag}")
        self.root = Path(tempfile.mkdtemp(prefix="vhprojtest-"))
        os.chmod(self.root, 0o755)
        self.store = self.root / "store"
        for p in self.projects:
            volume = self.store / "projects" / p / "uid0" / "v1.ome.zarr"
            volume.mkdir(parents=True)
            (volume / "zarr.json").write_text("{}")
        (self.store / ".tmp").mkdir()
        (self.store / "catalog.sqlite").write_text("")
        os.chmod(self.store, 0o755)

    def as_user(self, user: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", user, "--", *cmd], capture_output=True, text=True, timeout=60
        )


@pytest.fixture
def box() -> Iterator[Box]:
    group_existed = group_exists(MANAGED_GROUP)
    b = Box()
    try:
        yield b
    finally:
        for user in b.users:
            remove_account(user)
        for project in b.projects:
            pg.remove_group(project)
        shutil.rmtree(b.root, ignore_errors=True)
        if (
            not group_existed
            and group_exists(MANAGED_GROUP)
            and not grp.getgrnam(MANAGED_GROUP).gr_mem
        ):
            subprocess.run(["groupdel", MANAGED_GROUP], check=True)
    for user in b.users:
        with pytest.raises(KeyError):
            pwd.getpwnam(user)
    for project in b.projects:
        assert not group_exists(pg.unix_group(project)), f"group of {project} left behind"


@root_only
def test_project_folders_get_their_group_and_mode_2750(box: Box) -> None:
    (box.store / "projects" / "README").write_text("not a project")
    outside = box.root / "outside"
    outside.mkdir()
    os.symlink(outside, box.store / "projects" / "link")
    secured = pg.secure_store(box.store)
    assert set(secured) == set(box.projects)  # no file, no symlink
    for p in box.projects:
        st = (box.store / "projects" / p).stat()
        assert st.st_gid == grp.getgrnam(pg.unix_group(p)).gr_gid
        assert stat.S_IMODE(st.st_mode) == 0o2750, oct(st.st_mode)
        assert st.st_uid == 0  # the owner (who ingests) is kept
    assert stat.S_IMODE((box.store / ".tmp").stat().st_mode) == 0o700
    assert stat.S_IMODE((box.store / "projects").stat().st_mode) == 0o755
    assert stat.S_IMODE(outside.stat().st_mode) != 0o2750  # the link was not followed
    # what ingest adds later below a project folder inherits the group (setgid)
    new = box.store / "projects" / box.projects[0] / "uid1"
    new.mkdir()
    assert new.stat().st_gid == grp.getgrnam(pg.unix_group(box.projects[0])).gr_gid
    assert pg.secure_store(box.store) == secured  # idempotent


@root_only
def test_members_read_their_project_and_nobody_else_can(box: Box) -> None:
    alice, bob = box.users
    mine, theirs = box.projects
    for user in box.users:
        ensure_account(user)
    pg.secure_store(box.store)
    assert pg.sync_memberships(alice, [mine]) == ({pg.unix_group(mine)}, set())
    assert pg.sync_memberships(bob, [theirs]) == ({pg.unix_group(theirs)}, set())
    own = box.store / "projects" / mine
    other = box.store / "projects" / theirs

    listing = box.as_user(alice, "ls", str(own))
    assert listing.returncode == 0 and "uid0" in listing.stdout, listing.stderr
    read = box.as_user(alice, "cat", str(own / "uid0" / "v1.ome.zarr" / "zarr.json"))
    assert read.returncode == 0 and read.stdout == "{}", read.stderr
    for target in (other, other / "uid0" / "v1.ome.zarr" / "zarr.json"):
        denied = box.as_user(alice, "cat" if target.suffix == ".json" else "ls", str(target))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (target, denied)
    assert box.as_user(alice, "ls", str(box.store / ".tmp")).returncode != 0
    assert box.as_user(alice, "cat", str(box.store / "catalog.sqlite")).returncode == 0
    assert box.as_user(bob, "ls", str(other)).returncode == 0

    # leaving the hub group takes the unix group away (applied at the next spawn)
    assert pg.sync_memberships(alice, []) == (set(), {pg.unix_group(mine)})
    assert box.as_user(alice, "ls", str(own)).returncode != 0
    # joining another project: only vhp-* groups change, others (voxelhub-users) stay
    pg.sync_memberships(alice, [theirs])
    assert box.as_user(alice, "ls", str(other)).returncode == 0
    assert alice in grp.getgrnam(MANAGED_GROUP).gr_mem
    assert pg.memberships(alice) == {pg.unix_group(theirs)}


@root_only
def test_pre_spawn_hook_creates_account_groups_and_secures_new_folders(box: Box) -> None:
    alice = box.users[0]
    hook = pg.make_pre_spawn_hook(str(box.store))
    late = box.store / "projects" / f"late{box.projects[0][2:]}"  # ingested after the hub started
    late.mkdir()
    box.projects = (*box.projects, late.name)  # so the fixture removes its group
    spawner = SimpleNamespace(
        user=SimpleNamespace(
            name=alice, groups=[SimpleNamespace(name=box.projects[0])], spawner=None
        )
    )
    hook(spawner)
    assert pwd.getpwnam(alice).pw_dir and pg.memberships(alice) == {pg.unix_group(box.projects[0])}
    assert stat.S_IMODE(late.stat().st_mode) == 0o2750
    assert box.as_user(alice, "ls", str(late)).returncode != 0
