"""The audit trail: hash chain, tampering found and located, read aggregation, CLI.

Real files in tmp_path throughout; tampering is done the way an attacker would, by rewriting
the file's lines.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from voxelhub.audit import (
    GENESIS,
    AuditLog,
    AuditRecord,
    Checkpoint,
    checkpoint,
    query,
    to_frame,
    verify,
)
from voxelhub.errors import AuditError, VoxelHubError

T0 = datetime(2026, 11, 26, 10, 0, 5, 123456, tzinfo=UTC)
VOLUME = "2.25.1234"


def sha(record: dict[str, object]) -> str:
    """The hash as the issue defines it, computed here independently of the module."""
    body = {k: v for k, v in record.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fill(path: Path, n: int, *, start: datetime = T0) -> None:
    """``n`` single decisions, alternating users and patients, one second apart."""
    with AuditLog(path) as audit:
        for i in range(n):
            audit.record(
                user=("alice", "bob")[i % 2],
                client="kernel",
                action="volume.metadata",
                decision="allow",
                reason="project member",
                project="lung",
                patient=f"P{i % 3}",
                study="2.25.9",
                volume=f"2.25.{i}",
                source="10.0.0.7",
                at=start + timedelta(seconds=i),
            )


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in lines(path)]


def write_records(path: Path, recs: list[dict[str, object]]) -> None:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in recs))


def forge(record: dict[str, object], **changes: object) -> dict[str, object]:
    """A changed record whose own hash is recomputed (what an attacker can always do)."""
    forged = {**record, **changes}
    forged["hash"] = sha(forged)
    return forged


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    fill(path, 10)
    return path


# --- format and chain ------------------------------------------------------------------------


def test_records_are_chained_json_lines_with_the_documented_hash(log: Path) -> None:
    recs = records(log)
    assert [r["seq"] for r in recs] == list(range(1, 11))
    assert recs[0]["prev"] == GENESIS
    for before, rec in itertools.pairwise(recs):
        assert rec["prev"] == before["hash"]
    for rec in recs:
        assert rec["hash"] == sha(rec)
        assert rec["time"] == datetime.fromisoformat(str(rec["time"])).isoformat()
    assert recs[3]["time"] == "2026-11-26T10:00:08.123456+00:00"
    assert {"user", "client", "project", "patient", "study", "volume", "labels", "source"} <= set(
        recs[0]
    )
    assert (recs[0]["decision"], recs[0]["count"], recs[0]["nbytes"]) == ("allow", 1, 0)


def test_the_log_is_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old = os.umask(0)
    try:
        AuditLog(path).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_clean_log_verifies_and_says_a_cut_tail_needs_checkpoints(log: Path) -> None:
    result = verify(log)
    assert result.ok and result.records == 10 and result.head_seq == 10
    assert result.head_hash == records(log)[-1]["hash"]
    assert "no checkpoints file given" in result.message
    assert "cut off the end" in result.message


def test_record_returns_what_was_stored_and_text_survives_unicode(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        rec = audit.record(
            user="zoë\u2028\n{",
            client="server",
            action="catalog.series",
            decision="allow",
            detail={"modality": "CT", "text": "thorax \ud800", "since": T0, "ids": (1, 2)},
        )
    assert isinstance(rec, AuditRecord)
    stored = records(path)[0]
    assert stored == rec.to_dict()
    assert stored["detail"] == {
        "modality": "CT",
        "text": "thorax ?",
        "since": str(T0),
        "ids": [1, 2],
    }
    assert len(lines(path)) == 1
    assert verify(path).ok


# --- tampering ---------------------------------------------------------------------------------


def test_an_edited_record_is_found_by_its_hash(log: Path) -> None:
    recs = records(log)
    recs[4]["user"] = "mallory"
    write_records(log, recs)
    result = verify(log)
    assert not result.ok
    assert (result.first_bad_line, result.first_bad_seq) == (5, 5)
    assert "line 5 (seq 5)" in result.message and "edited" in result.message


def test_a_deleted_record_is_a_gap(log: Path) -> None:
    recs = records(log)
    del recs[4]
    write_records(log, recs)
    result = verify(log)
    assert not result.ok
    assert (result.first_bad_line, result.first_bad_seq) == (5, 5)
    assert "seq 5 missing before line 5 (seq 6)" in result.message
    assert "deleted" in result.message


def test_deleting_the_first_records_is_found(log: Path) -> None:
    write_records(log, records(log)[2:])
    result = verify(log)
    assert not result.ok
    assert "seq 1..2 missing before line 1" in result.message


def test_an_inserted_forged_record_with_its_own_hash_is_found(log: Path) -> None:
    recs = records(log)
    # seq and prev chosen to fit in after record 4; its own hash is right
    forged = forge(recs[3], user="mallory", seq=5, prev=recs[3]["hash"])
    write_records(log, [*recs[:4], forged, *recs[4:]])
    result = verify(log)
    assert not result.ok
    assert result.first_bad_line == 5
    assert "line 5 (seq 5) inserted" in result.message


def test_an_inserted_record_with_a_made_up_seq_is_found(log: Path) -> None:
    recs = records(log)
    forged = forge(recs[3], seq=99, prev=recs[3]["hash"])
    write_records(log, [*recs[:4], forged, *recs[4:]])
    result = verify(log)
    assert not result.ok
    assert (result.first_bad_line, result.first_bad_seq) == (5, 99)
    assert "line 5 (seq 99) inserted" in result.message


def test_swapped_records_are_found_as_reordered(log: Path) -> None:
    recs = records(log)
    recs[4], recs[5] = recs[5], recs[4]
    write_records(log, recs)
    result = verify(log)
    assert not result.ok
    assert (result.first_bad_line, result.first_bad_seq) == (5, 6)
    assert "line 5 (seq 6) comes before line 6 (seq 5)" in result.message
    assert "reordered" in result.message


def test_a_duplicated_record_is_found(log: Path) -> None:
    recs = records(log)
    write_records(log, [*recs[:5], recs[4], *recs[5:]])
    result = verify(log)
    assert not result.ok
    assert result.first_bad_line == 6
    assert "line 6 (seq 5) is a copy of line 5" in result.message


def test_a_replaced_record_with_a_recomputed_hash_breaks_the_next_link(log: Path) -> None:
    recs = records(log)
    recs[4] = forge(recs[4], user="mallory")
    write_records(log, recs)
    result = verify(log)
    assert not result.ok
    assert (result.first_bad_line, result.first_bad_seq) == (5, 5)
    assert "line 6 (seq 6) does not link to line 5 (seq 5)" in result.message


def test_a_malformed_line_is_named(log: Path) -> None:
    raw = lines(log)
    raw[6] = b'{"seq": 7, "user": "alice"\n'
    log.write_bytes(b"".join(raw))
    result = verify(log)
    assert not result.ok
    assert (result.first_bad_line, result.first_bad_seq) == (7, 7)
    assert "line 7 is not valid JSON" in result.message


def test_a_truncated_tail_is_found_only_with_a_checkpoint(log: Path, tmp_path: Path) -> None:
    marks = tmp_path / "checkpoints.jsonl"
    mark = checkpoint(log, marks)
    assert isinstance(mark, Checkpoint)
    assert (mark.seq, mark.hash) == (10, records(log)[-1]["hash"])
    assert json.loads(marks.read_text()) == {
        "seq": 10,
        "hash": mark.hash,
        "time": mark.time,
        "log": str(log),
    }
    assert verify(log, marks).ok
    log.write_bytes(b"".join(lines(log)[:7]))
    assert verify(log).ok  # what remains is a valid chain: this is why checkpoints exist
    result = verify(log, marks)
    assert not result.ok
    assert (result.first_bad_line, result.first_bad_seq) == (8, 8)
    assert "ends at seq 7 (line 7)" in result.message
    assert "records seq 10" in result.message and "truncated" in result.message
    assert "line 1 of" in result.message


def test_a_rewritten_and_rechained_log_is_found_by_the_checkpoint(
    log: Path, tmp_path: Path
) -> None:
    marks = tmp_path / "checkpoints.jsonl"
    recs = records(log)
    write_records(log, recs[:3])
    checkpoint(log, marks)  # head at seq 3
    write_records(log, recs)
    checkpoint(log, marks)  # head at seq 10
    assert verify(log, marks).message.endswith("2 checkpoint(s) agree, the last at seq 10")
    recs[4]["user"] = "mallory"
    for i in range(4, 10):  # the attacker re-chains everything after the edit
        recs[i] = forge(recs[i], prev=recs[i - 1]["hash"])
    write_records(log, recs)
    assert verify(log).ok  # the chain alone cannot tell
    result = verify(log, marks)
    assert not result.ok
    assert (result.first_bad_line, result.first_bad_seq) == (10, 10)
    assert "line 10 (seq 10)" in result.message
    assert "rewritten and re-chained" in result.message
    assert "the change lies in seq 4..10" in result.message


def test_checkpoints_of_other_logs_are_not_used(log: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    fill(other, 20)
    marks = tmp_path / "checkpoints.jsonl"
    checkpoint(other, marks)
    result = verify(log, marks)
    assert result.ok and result.checkpoints == 0
    assert "no checkpoint in" in result.message and "1 name other logs" in result.message


def test_an_empty_log_can_be_checkpointed_and_then_must_not_lose_records(
    tmp_path: Path,
) -> None:
    path, marks = tmp_path / "audit.jsonl", tmp_path / "checkpoints.jsonl"
    AuditLog(path).close()
    assert checkpoint(path, marks).seq == 0
    assert verify(path, marks).ok


# --- opening, resuming -------------------------------------------------------------------------


def test_reopening_continues_the_chain(log: Path) -> None:
    last = records(log)[-1]
    with AuditLog(log) as audit:
        assert audit.head == (10, last["hash"])
        rec = audit.record(user="carol", client="worker", action="volume.read", decision="allow")
    assert (rec.seq, rec.prev) == (11, last["hash"])
    assert verify(log).records == 11


@pytest.mark.parametrize(
    ("damage", "why"),
    [(b'{"seq": 11, "hash": "x', "incomplete"), (b"garbage\n", "not valid JSON")],
)
def test_a_damaged_last_line_refuses_to_open(log: Path, damage: bytes, why: str) -> None:
    with log.open("ab") as f:
        f.write(damage)
    with pytest.raises(AuditError, match=rf"{log}, line 11: the last record .*{why}") as info:
        AuditLog(log)
    assert isinstance(info.value, VoxelHubError)
    assert "refusing to append" in str(info.value)


def test_an_edited_last_record_refuses_to_open(log: Path) -> None:
    recs = records(log)
    recs[-1]["user"] = "mallory"
    write_records(log, recs)
    with pytest.raises(AuditError, match="line 10: the last record does not match its hash"):
        AuditLog(log)


def test_two_writers_on_one_file_keep_one_chain(tmp_path: Path) -> None:
    """As two service processes would: each picks up the other's head before appending."""
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as a, AuditLog(path) as b:
        for i in range(50):
            (a if i % 3 else b).record(user="u", client="server", action="x", decision="allow")
    result = verify(path)
    assert result.ok and result.records == 50


def test_eight_threads_append_one_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync_every=0) as audit:

        def work(t: int) -> None:
            for i in range(500):
                audit.record(
                    user=f"user{t}",
                    client="server",
                    action="volume.metadata",
                    decision=("allow", "deny")[i % 50 == 0],
                    volume=f"2.25.{i}",
                )

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    result = verify(path)
    assert result.ok, result.message
    assert result.records == 4000
    assert len(query(path, user="user3")) == 500


# --- aggregation -----------------------------------------------------------------------------


def read(audit: AuditLog, at: datetime, *, user: str = "alice", nbytes: int = 4096) -> None:
    audit.read(
        user=user,
        client="worker",
        project="lung",
        patient="P1",
        study="2.25.9",
        volume=VOLUME,
        nbytes=nbytes,
        source="10.0.0.8",
        at=at,
    )


def test_a_thousand_chunk_reads_in_a_minute_are_one_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        for i in range(1000):
            read(audit, T0 + timedelta(milliseconds=50 * i), nbytes=1000 + i)
        assert path.read_bytes() == b""  # nothing written until the minute is over
        assert audit.flush() == 1
    (rec,) = query(path)
    assert (rec.count, rec.nbytes) == (1000, sum(1000 + i for i in range(1000)))
    assert (rec.action, rec.decision, rec.user, rec.client) == (
        "volume.read",
        "allow",
        "alice",
        "worker",
    )
    assert (rec.volume, rec.patient, rec.source) == (VOLUME, "P1", "10.0.0.8")
    assert rec.time == T0.isoformat()
    assert rec.last == (T0 + timedelta(milliseconds=50 * 999)).isoformat()
    assert verify(path).ok


def test_reads_in_two_minutes_are_two_records_written_when_the_minute_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        read(audit, T0)
        read(audit, T0 + timedelta(seconds=10))
        read(audit, T0 + timedelta(seconds=60))  # 10:01:05: the 10:00 aggregate is written
        assert [r.count for r in query(path)] == [2]
    assert [(r.count, r.time[11:19]) for r in query(path)] == [(2, "10:00:05"), (1, "10:01:05")]


def test_two_users_reading_one_volume_get_separate_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        for i in range(10):
            read(audit, T0 + timedelta(seconds=i), user=("alice", "bob")[i % 2])
    assert sorted((r.user, r.count) for r in query(path)) == [("alice", 5), ("bob", 5)]


def test_denials_are_never_aggregated_and_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        read(audit, T0)
        for i in range(3):
            audit.record(
                user="alice",
                client="worker",
                action="volume.read",
                decision="deny",
                reason="not a member of project lung",
                project="lung",
                volume=VOLUME,
                source="10.0.0.8",
                at=T0 + timedelta(seconds=i),
            )
            assert len(lines(path)) == i + 1
        read(audit, T0 + timedelta(seconds=5))
    recs = query(path)
    assert [(r.decision, r.count) for r in recs] == [("deny", 1)] * 3 + [("allow", 2)]
    assert recs[0].reason == "not a member of project lung"


def test_flush_due_writes_only_minutes_that_are_over(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        read(audit, T0)
        assert audit.flush_due(now=T0 + timedelta(seconds=30)) == 0
        assert audit.flush_due(now=T0 + timedelta(seconds=55)) == 1
        assert len(query(path)) == 1
        read(audit, T0 + timedelta(seconds=70))
    assert len(query(path)) == 2  # close() wrote the pending one


def test_a_decision_value_other_than_allow_or_deny_is_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.jsonl") as audit, pytest.raises(ValueError, match="allow"):
        audit.record(user="a", client="server", action="x", decision="maybe")


# --- queries ------------------------------------------------------------------------------------


def test_query_filters(log: Path) -> None:
    assert [r.seq for r in query(log, patient="P1")] == [2, 5, 8]
    assert [r.seq for r in query(log, user="bob", patient="P1")] == [2, 8]
    assert [r.seq for r in query(log, since=T0 + timedelta(seconds=7))] == [8, 9, 10]
    assert [r.seq for r in query(log, since="2026-11-26T10:00:12.123456")] == [8, 9, 10]
    assert [r.seq for r in query(log, series="2.25.3")] == [4]
    assert query(log, project="other") == []
    assert len(query(log, action="volume.metadata", decision="allow")) == 10
    with pytest.raises(AuditError, match="not an ISO-8601 time"):
        query(log, since="yesterday")


def test_to_frame(log: Path) -> None:
    frame = to_frame(query(log, user="alice"))
    assert list(frame["seq"]) == [1, 3, 5, 7, 9]
    assert str(frame["time"].dt.tz) == "UTC"
    assert frame["time"].iloc[0] == T0


# --- CLI --------------------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxelhub.cli", "audit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cli_verify_and_checkpoint(log: Path, tmp_path: Path) -> None:
    marks = tmp_path / "checkpoints.jsonl"
    done = cli("checkpoint", "--log", str(log), "--checkpoints", str(marks))
    assert done.returncode == 0, done.stderr
    assert "seq 10" in done.stdout
    done = cli(
        "verify", env={"VOXELHUB_AUDIT_LOG": str(log), "VOXELHUB_AUDIT_CHECKPOINTS": str(marks)}
    )
    assert done.returncode == 0, done.stderr
    assert "ok, 10 record(s)" in done.stdout
    recs = records(log)
    recs[2]["decision"] = "allow "
    write_records(log, recs)
    done = cli("verify", "--log", str(log), "--checkpoints", str(marks))
    assert done.returncode == 1
    assert "line 3 (seq 3)" in done.stdout


def test_cli_query_table_and_json(log: Path) -> None:
    done = cli("query", "--log", str(log), "--patient", "P1", "--user", "bob")
    assert done.returncode == 0, done.stderr
    table = done.stdout.splitlines()
    assert table[0].split()[:3] == ["time", "user", "client"]
    assert len(table) == 3 and all("bob" in row and "P1" in row for row in table[1:])
    done = cli("query", "--log", str(log), "--since", "2026-11-26T10:00:13Z", "--json")
    assert done.returncode == 0, done.stderr
    assert [json.loads(row)["seq"] for row in done.stdout.splitlines()] == [9, 10]


def test_cli_without_a_log_path_says_how_to_give_one() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXELHUB_AUDIT")}
    done = subprocess.run(
        [sys.executable, "-m", "voxelhub.cli", "audit", "query"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2
    assert "--log PATH or set $VOXELHUB_AUDIT_LOG" in done.stderr


def test_cli_query_by_someone_who_may_not_read_the_log(log: Path) -> None:
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("needs runuser to drop root")
        # root's pytest folder is 0700: for nobody the log is out of reach, as in deployment
        command = ["runuser", "-u", "nobody", "--"]
    else:
        log.chmod(0)
        command = []
    done = subprocess.run(
        [*command, sys.executable, "-m", "voxelhub.cli", "audit", "query", "--log", str(log)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert done.returncode == 2, done.stderr
    assert f"only the data service account and root may read the audit log at {log}" in done.stderr
