"""The sample notebooks in every user's home: ``~/examples``, read-only, always current.

The hub (root) publishes the checkout's ``sample_notebooks/`` to ``<state>/examples``: a copy
owned by root, folders 0555 and files 0444, so it is readable by every user even when the
checkout itself sits in a private folder (as ``runtime.py`` does for the code).  Before each
spawn :func:`link_examples` makes ``~/examples`` a symbolic link to that copy.  Users open and run
the notebooks from there and copy them to edit (JupyterLab shows them read-only); nobody can
change the shared copy.  Publishing again when the checkout changed (compared by content, at
every spawn) updates every user's ``examples/`` at once, with nothing to copy into homes.

What is done in a user's home runs as root, so it never follows a link and never replaces what
the user put there: a missing ``examples`` gets the link, a link of ours pointing elsewhere (an
older state folder) is replaced, and anything else of that name is the user's and left alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: the entry each user's home gets
LINK_NAME = "examples"
#: what is published: the checkout's sample notebooks (``*.ipynb``) and nothing else
SOURCE = "sample_notebooks"
_STAMP = ".source-sha256"


def _digest(source: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(source.glob("*.ipynb")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def publish_examples(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> bool:
    """Copy the notebooks of ``source`` to ``target`` (root's, 0555/0444) unless already current.

    Returns True if ``target`` was (re)written.  The new copy is made beside ``target`` and
    renamed into place, so a user never lists a half-written folder.
    """
    src, dst = Path(source), Path(target)
    digest = _digest(src)
    try:
        if (dst / _STAMP).read_text() == digest:
            return False
    except OSError:
        pass
    staging = dst.with_name(dst.name + ".new")
    old = dst.with_name(dst.name + ".old")
    for folder in (staging, old):
        _remove(folder)
    staging.mkdir(mode=0o755)
    for path in sorted(src.glob("*.ipynb")):
        shutil.copyfile(path, staging / path.name, follow_symlinks=False)
        os.chmod(staging / path.name, 0o444)
    (staging / _STAMP).write_text(digest)
    os.chmod(staging / _STAMP, 0o444)
    os.chmod(staging, 0o555)
    if dst.exists():
        os.rename(dst, old)
    os.rename(staging, dst)
    _remove(old)
    return True


def _remove(folder: Path) -> None:
    if folder.exists():
        os.chmod(folder, 0o755)  # 0555: entries cannot be unlinked until it is writable again
        shutil.rmtree(folder)


def link_examples(username: str, target: str | os.PathLike[str]) -> str:
    """Make ``~username/examples`` a link to ``target``; return what was done.

    ``"linked"``, ``"current"`` (already the link), ``"relinked"`` (a link to another copy,
    replaced) or ``"kept"`` (something of the user's is called ``examples``: left alone).
    """
    home = pwd.getpwnam(username).pw_dir
    want = str(target)
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            st = os.stat(LINK_NAME, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            os.symlink(want, LINK_NAME, dir_fd=fd)
            return "linked"
        if not stat.S_ISLNK(st.st_mode) or st.st_uid != 0:
            return "kept"  # the user's own folder, file or link
        if os.readlink(LINK_NAME, dir_fd=fd) == want:
            return "current"
        os.unlink(LINK_NAME, dir_fd=fd)
        os.symlink(want, LINK_NAME, dir_fd=fd)
        return "relinked"
    finally:
        os.close(fd)


def with_examples(
    hook: Callable[[Any], None], source: str | os.PathLike[str], target: str | os.PathLike[str]
) -> Callable[[Any], None]:
    """Wrap a ``Spawner.pre_spawn_hook`` (which creates the account): then publish and link.

    Hooks run one at a time in the hub's event loop, so concurrent spawns never publish at once.
    """

    def pre_spawn(spawner: Any) -> None:
        hook(spawner)
        if publish_examples(source, target):
            log.info("published the sample notebooks to %s", target)
        done = link_examples(spawner.user.name, target)
        if done == "kept":
            log.info(
                "%s has their own ~/%s; not linking the examples", spawner.user.name, LINK_NAME
            )

    pre_spawn.__qualname__ = pre_spawn.__name__ = "voxelhub_pre_spawn_examples"
    return pre_spawn
