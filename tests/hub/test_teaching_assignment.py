"""Sample notebook 2 as an nbgrader assignment (issue 12): generate, then autograde a right and a
wrong submission with the hidden tests, on the real phantom CT.

No hub and no root: nbgrader's own course-folder flow, as the grader account runs it (the hub
round trip is in test_teaching.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
ASSIGNMENT = "teaching_exercise"
SOURCE = REPO / "sample_notebooks" / "course" / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
EXAMPLE = REPO / "sample_notebooks" / "02_teaching_exercise.ipynb"
NBGRADER = str(Path(sys.executable).parent / "nbgrader")

#: the students' answers, one per ``# YOUR ANSWER`` cell, in order
RIGHT = [
    "threshold = -450\nbody = volume > threshold\nbody_ml = float(body.sum()) * "
    "float(np.prod(volume.attrs['spacing_zyx'])) / 1000",
    "body_mean_hu = float(volume.where(body).mean())",
    "largest_slice = int(body.sum(dim=('y', 'x')).values.argmax())",
]
#: mm³ instead of mL (the visible check fails), the right mean, and a slice two off the widest
#: one: inside the visible check's tolerance, caught only by the hidden test
WRONG = [
    "threshold = -500\nbody = volume > threshold\nbody_ml = float(body.sum()) * "
    "float(np.prod(volume.attrs['spacing_zyx']))",
    "body_mean_hu = float(volume.where(body).mean())",
    "largest_slice = int(body.sum(dim=('y', 'x')).values.argmax()) + 2",
]
#: (score, max score) the two answers get: 2 + 1 + 1 points
SCORES = {"right": (4.0, 4.0), "wrong": (1.0, 4.0)}


def answer(released: dict, answers: list[str]) -> dict:
    """A student's copy of the released notebook with ``answers`` in the answer cells."""
    nb = json.loads(json.dumps(released))
    cells = [c for c in nb["cells"] if "".join(c["source"]).startswith("# YOUR ANSWER")]
    assert len(cells) == len(answers)
    for cell, text in zip(cells, answers, strict=True):
        source = "".join(cell["source"])
        assert "raise NotImplementedError()" in source, source
        cell["source"] = source.replace("raise NotImplementedError()", text)
    return nb


def test_the_source_is_sample_notebook_2_with_its_answers_marked() -> None:
    """The assignment and the example in examples/ stay the same exercise."""
    example, source = (nbformat.read(p, as_version=4) for p in (EXAMPLE, SOURCE))
    code = [c.source for c in example.cells if c.cell_type == "code"]
    marked = [c.source for c in source.cells if c.cell_type == "code"]
    assert len(code) == len(marked)
    strip = ("### BEGIN SOLUTION\n", "\n### END SOLUTION")
    for mine, theirs in zip(marked, code, strict=True):
        plain = mine.replace(strip[0], "").replace(strip[1], "").split("\n### BEGIN HIDDEN")[0]
        assert plain == theirs
    graded = {
        c.metadata.nbgrader["grade_id"]: c.metadata.nbgrader["points"]
        for c in source.cells
        if c.metadata.get("nbgrader", {}).get("grade")
    }
    assert graded == {"volume": 2, "mean": 1, "largest_slice": 1}
    assert sum(graded.values()) == SCORES["right"][1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_autograde_scores_a_right_and_a_wrong_submission(
    tmp_path: Path, shared_dicom: Path
) -> None:
    graded = _autograde(tmp_path, shared_dicom, {"right": RIGHT, "wrong": WRONG})
    assert "about 1000 times too large" in graded["wrong"]  # the visible check's hint
    assert "the widest slice of your mask is" in graded["wrong"]  # only the hidden test says this


#: appended to a wrong answer: what a submission tries while it is autograded in the sandbox
#: (the hub test adds the exchange and the hub API)
ATTACK = """
import os, glob
def _try(what, act):
    try:
        print("SANDBOX", what, "done", act())
    except Exception as exc:
        print("SANDBOX", what, type(exc).__name__)
_secret = {secret!r}
print("SANDBOX env_has_grader_secret", any(_secret in v for v in os.environ.values()))
print("SANDBOX env_token", os.environ.get("JUPYTERHUB_API_TOKEN", "none"))
_try("read_grader_environ", lambda: _secret in open("/proc/{pid}/environ").read())
print("SANDBOX processes", len([p for p in os.listdir("/proc") if p.isdigit()]))
_try("open_gradebook", lambda: open({course!r} + "/gradebook.db", "r+b").read(16))
_try("write_gradebook", lambda: open({course!r} + "/gradebook.db", "wb").write(b"x"))
_try("read_other_submitted", lambda: open(glob.glob({course!r} + "/submitted/right/*/*.ipynb")[0]).read())
_try("read_other_autograded", lambda: os.listdir({course!r} + "/autograded/right"))
_try("write_outside", lambda: open({outside!r}, "w").write("x"))
_try("write_own_folder", lambda: open("scratch.txt", "w").write("x"))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_autograde_runs_submissions_in_the_sandbox(tmp_path: Path, shared_dicom: Path) -> None:
    """With the hub's nbgrader config: the grader's secret token, its processes, the gradebook
    and the other submissions are out of a submission's reach; the scores stay right."""
    secret = "grader-server-token-" + os.urandom(8).hex()
    outside = tmp_path / "course" / "planted.txt"
    attack = ATTACK.format(
        secret=secret, pid=os.getpid(), course=str(tmp_path / "course"), outside=str(outside)
    )
    wrong = [*WRONG[:-1], WRONG[-1] + "\n" + attack]
    env = {
        "JUPYTERHUB_API_TOKEN": secret,  # the grader server's token: must stay outside
        "VOXELHUB_GRADING_DATA_TOKEN": "data-only-token",  # what the kernel gets instead
        "JUPYTER_CONFIG_PATH": str(REPO / "hub_config" / "jupyter"),
    }
    graded = _autograde(
        tmp_path, shared_dicom, {"right": RIGHT, "wrong": wrong}, env=env,
        config=f"c.GradingSandbox.read_only = [{str(tmp_path / 'store')!r}]\n",
    )  # fmt: skip
    said = printed(graded["wrong"], "SANDBOX")
    assert said == {
        "env_has_grader_secret": "False",
        "env_token": "data-only-token",
        "read_grader_environ": "FileNotFoundError",
        "processes": said.get("processes"),
        "open_gradebook": "FileNotFoundError",
        "write_gradebook": "OSError",  # a read-only, empty folder in its place
        "read_other_submitted": "IndexError",  # no submission of anyone is there to glob
        "read_other_autograded": "FileNotFoundError",
        "write_outside": "OSError",
        "write_own_folder": "done 1",
    }, said
    assert int(said["processes"]) <= 3  # bwrap's init and the kernel, nothing of the grader
    assert not outside.exists()


def printed(notebook: str, key: str) -> dict[str, str]:
    """What a notebook's cells printed as ``KEY what outcome`` lines: {what: outcome}."""
    lines = [
        line
        for cell in json.loads(notebook)["cells"]
        for output in cell.get("outputs", [])
        for line in "".join(output.get("text", "")).splitlines()
    ]
    return {
        line.split()[1]: " ".join(line.split()[2:]) for line in lines if line.startswith(key + " ")
    }


def _autograde(
    tmp_path: Path,
    shared_dicom: Path,
    submissions: dict[str, list[str]],
    env: dict[str, str] | None = None,
    config: str = "",
) -> dict[str, str]:
    """Generate the assignment, autograde ``submissions`` (student -> answers), check the
    scores; return each student's autograded notebook as text."""
    from nbgrader.api import Gradebook

    from voxelhub import ingest

    store = tmp_path / "store"
    phantom = shared_dicom / "ct_philips_ingenuity_phantom"
    assert not ingest(phantom, store, project="course", deidentify=True, progress=False).failed

    course = tmp_path / "course"
    shutil.copytree(SOURCE.parent, course / "source" / ASSIGNMENT)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.course_id = 'mri101'\n" + config
    )
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "VOXELHUB_"))}
    env |= {"VOXELHUB_STORE": str(store), "JUPYTER_CONFIG_PATH": str(tmp_path / "noconfig")}
    env |= extra
    env["PATH"] = f"{Path(NBGRADER).parent}{os.pathsep}{env.get('PATH', '')}"  # alembic, kernel

    def nbgrader(*args: str) -> None:
        r = subprocess.run(
            [NBGRADER, *args], cwd=course, env=env, capture_output=True, text=True, timeout=500
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    nbgrader("generate_assignment", ASSIGNMENT, "--force")
    released_path = course / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    released_text = released_path.read_text()
    assert "HIDDEN TESTS" not in released_text and "threshold = -500" not in released_text
    assert released_text.count("raise NotImplementedError()") == 3
    released = json.loads(released_text)

    for student, answers in submissions.items():
        nbgrader("db", "student", "add", student)
        folder = course / "submitted" / student / ASSIGNMENT
        folder.mkdir(parents=True)
        (folder / f"{ASSIGNMENT}.ipynb").write_text(json.dumps(answer(released, answers)))
        (folder / "timestamp.txt").write_text("2026-11-26 10:00:00.000000 UTC")
    nbgrader("autograde", ASSIGNMENT)

    with Gradebook(f"sqlite:///{course}/gradebook.db", "mri101") as gb:
        scores = {
            s: (
                gb.find_submission(ASSIGNMENT, s).score,
                gb.find_submission(ASSIGNMENT, s).max_score,
            )
            for s in SCORES
        }
    assert scores == SCORES
    return {
        s: (course / "autograded" / s / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text()
        for s in submissions
    }
