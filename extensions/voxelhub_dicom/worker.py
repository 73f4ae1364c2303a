"""The arrival worker: inside the edge's namespace, as the data service's account.

It polls Orthanc's ``/changes``.  ``NewStudy`` opens an arrival (``receiving``); ``StableStudy``
(no instance for ``stable_seconds``) takes the study: every instance is fetched from the REST
API and checked (:func:`~voxelhub_dicom.checks.check_instance`: Orthanc answers Success to
truncated files), the good ones are ingested into the project of the AE title they were sent to
with :func:`voxelhub.ingest.ingest` (de-identified when the project is), and the study is
deleted from Orthanc unless the site keeps it there.  Every arrival, every rejected instance and
every refused caller (read from Orthanc's log) goes to the audit trail.

Run by :mod:`voxelhub_dicom.edge` as ``python -m voxelhub_dicom.worker CONFIG.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from voxelhub import audit
from voxelhub_dicom.arrivals import Arrivals
from voxelhub_dicom.checks import check_instance
from voxelhub_dicom.orthanc import REFUSED_MARK, Orthanc, parse_caller

log = logging.getLogger("voxelhub.dicom")

USER = "dicom-edge"
_ASSOCIATION_REFUSED = re.compile(r"Rejected association for remote AET (\S+) on IP (\S+)")
_LUA_REFUSED = re.compile(
    re.escape(REFUSED_MARK) + r" called=(\S*) caller=(\S*)@(\S*) reason=(.*)$"
)


@dataclass
class Sender:
    called: str
    calling: str
    host: str
    instances: list[str] = field(default_factory=list)


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.orthanc = Orthanc(config["orthanc_url"], config["user"], config["password"])
        self.arrivals = Arrivals(config["arrivals"])
        self.audit = audit.AuditLog(config["audit_log"], fsync_every=1)
        self.ae_titles: dict[str, str] = dict(config["ae_titles"])
        self.callers = {
            project: {parse_caller(c) for c in callers}
            for project, callers in config["callers"].items()
        }
        self.deidentify: dict[str, bool] = dict(config.get("deidentify", {}))
        self.keep = bool(config.get("keep_in_orthanc", False))
        self.log_offset = 0
        self.stopping = False

    # -- main loop --
    def serve(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        deadline = time.monotonic() + 60
        while not self.orthanc.ready():
            if self.stopping or time.monotonic() > deadline:
                raise SystemExit("Orthanc did not answer on its REST API")
            time.sleep(0.1)
        ready = self.config["ready_file"]
        with open(ready + ".tmp", "w") as f:
            json.dump({"pid": os.getpid()}, f)
        os.replace(ready + ".tmp", ready)
        log.info("the DICOM edge is ready")
        while not self.stopping:
            try:
                self.poll_log()
                self.poll_changes()
            except requests.RequestException as exc:
                log.warning("Orthanc's REST API: %s", exc)
            time.sleep(float(self.config.get("poll_seconds", 1.0)))
        self.poll_log()
        self.audit.close()
        self.arrivals.close()

    def _stop(self, *_: Any) -> None:
        self.stopping = True

    def poll_changes(self) -> None:
        since = int(self.arrivals.get_state("orthanc_seq", "0"))
        while not self.stopping:
            page = self.orthanc.get("/changes", since=since, limit=100)
            if int(page["Last"]) < since:  # Orthanc's index was reset: start again from 0
                since = 0
                continue
            for change in page["Changes"]:
                if change["ResourceType"] != "Study":
                    continue
                if change["ChangeType"] == "NewStudy":
                    self.receiving(change["ID"])
                elif change["ChangeType"] == "StableStudy":
                    self.take(change["ID"])
            since = int(page["Last"])
            self.arrivals.set_state("orthanc_seq", str(since))
            if page["Done"]:
                break

    # -- a study --
    def senders(self, study: str) -> list[Sender]:
        """The study's instances grouped by (called AE title, calling AE title, host)."""
        groups: dict[tuple[str, str, str], Sender] = {}
        for instance in self.orthanc.get(f"/studies/{study}/instances"):
            meta = self.orthanc.get(f"/instances/{instance['ID']}/metadata", expand="")
            key = (
                meta.get("CalledAET", ""),
                meta.get("RemoteAET", ""),
                meta.get("RemoteIP", ""),
            )
            groups.setdefault(key, Sender(*key)).instances.append(instance["ID"])
        return list(groups.values())

    def receiving(self, study: str) -> None:
        try:
            senders = self.senders(study)
        except requests.HTTPError:
            return  # already gone
        for s in senders:
            project = self.ae_titles.get(s.called)
            if project is not None:
                self.arrivals.open_arrival(study, project, s.called, s.calling, s.host)

    def take(self, study: str) -> None:
        try:
            senders = self.senders(study)
            tags = self.orthanc.get(f"/studies/{study}").get("MainDicomTags", {})
        except requests.HTTPError:
            return
        for s in senders:
            self.take_from(study, str(tags.get("StudyInstanceUID", "")), s)

    def take_from(self, study: str, study_uid: str, s: Sender) -> None:
        project = self.ae_titles.get(s.called)
        if project is None or (s.calling, s.host) not in self.callers.get(project, set()):
            # Orthanc's filter refuses these at C-STORE; a configuration changed since is caught
            reason = (
                f"unknown AE title {s.called!r}"
                if project is None
                else f"{s.calling}@{s.host} may not send to project {project!r}"
            )
            arrival = self.arrivals.open_arrival(
                study, project or "", s.called, s.calling, s.host, state="refused"
            )
            self.arrivals.update(
                arrival, state="refused", instances=len(s.instances), message=reason
            )
            self.audit.record(
                user=USER,
                client="orthanc",
                action="dicom.arrival",
                decision="deny",
                reason=reason,
                project=project,
                source=s.host,
                count=len(s.instances),
                detail={"calling_aet": s.calling, "called_aet": s.called, "arrival": arrival},
            )
            self.remove(s.instances)
            return
        deidentify = self.deidentify.get(project)
        arrival = self.arrivals.open_arrival(study, project, s.called, s.calling, s.host)
        self.arrivals.update(arrival, state="ingesting", instances=len(s.instances))
        workdir = tempfile.mkdtemp(prefix="arrival-", dir=self.config["workdir"])
        rejected: list[dict[str, str]] = []
        volumes: list[str] = []
        nbytes = 0
        failure: str = ""
        try:
            good = 0
            for instance in s.instances:
                data = self.orthanc.file(instance)
                nbytes += len(data)
                problem = check_instance(data)
                if problem:
                    rejected.append({"instance": instance, "reason": problem})
                    continue
                with open(os.path.join(workdir, f"{instance}.dcm"), "wb") as f:
                    f.write(data)
                good += 1
            if good:
                from voxelhub.ingest import ingest

                report = ingest(
                    workdir,
                    self.config["store"],
                    project=project,
                    deidentify=deidentify,
                    catalog_url=self.config.get("catalog_url") or None,
                    workers=1,
                    progress=False,
                )
                volumes = report.written + report.unchanged
                for item in report.rejected_files:
                    name = os.path.basename(item["source"]).removesuffix(".dcm")
                    rejected.append({"instance": name, "reason": item["reason"]})
                failure = "; ".join(str(f["reason"]) for f in report.failed)
        except Exception as exc:  # an arrival that fails must not stop the edge
            log.exception("arrival %s failed", arrival)
            failure = f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if failure:
            state = "partial" if volumes else "failed"
        else:
            state = "partial" if rejected and volumes else "ingested" if volumes else "failed"
        message = (
            f"{len(volumes)} volume(s) in the store, {len(rejected)} of {len(s.instances)} "
            f"instance(s) rejected" + (f"; failed: {failure}" if failure else "")
        )
        kept = self.keep or bool(failure)
        if kept and not self.keep:
            message += "; kept in Orthanc for another try"
        self.arrivals.update(
            arrival, state=state, rejected=rejected, volumes=volumes, message=message[:2000]
        )
        for item in rejected:
            self.audit.record(
                user=USER,
                client="orthanc",
                action="dicom.instance",
                decision="deny",
                reason=item["reason"],
                project=project,
                source=s.host,
                detail={"instance": item["instance"], "calling_aet": s.calling, "arrival": arrival},
            )
        self.audit.record(
            user=USER,
            client="orthanc",
            action="dicom.arrival",
            decision="allow" if volumes else "deny",
            reason=message[:500],
            project=project,
            study=None if deidentify else study_uid or None,
            source=s.host,
            nbytes=nbytes,
            count=len(s.instances),
            detail={
                "arrival": arrival,
                "state": state,
                "calling_aet": s.calling,
                "called_aet": s.called,
                "volumes": volumes,
                "rejected": len(rejected),
            },
        )
        if not kept:
            self.remove(s.instances)
        log.info("arrival %s into %s: %s (%s)", arrival, project, state, message)

    def remove(self, instances: list[str]) -> None:
        if self.keep:
            return
        for instance in instances:
            self.orthanc.delete(f"/instances/{instance}")

    # -- refusals Orthanc made on its own: from its log --
    def poll_log(self) -> None:
        path = self.config["orthanc_log"]
        try:
            with open(path, "rb") as f:
                f.seek(self.log_offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1
        self.log_offset += end
        refused: dict[tuple[str, str, str, str, str], int] = {}
        for line in chunk[:end].decode("utf-8", "replace").splitlines():
            m = _ASSOCIATION_REFUSED.search(line)
            if m:
                key = ("dicom.associate", m.group(1).strip('"'), m.group(2), "", "unknown caller")
                refused[key] = refused.get(key, 0) + 1
                continue
            m = _LUA_REFUSED.search(line)
            if m:
                called, calling, host, reason = m.groups()
                key = ("dicom.store", calling, host, called, reason.strip())
                refused[key] = refused.get(key, 0) + 1
        for (action, calling, host, called, reason), count in refused.items():
            project = self.ae_titles.get(called) if called else None
            what = (
                f"association refused: {calling}@{host} is not an allowed caller"
                if action == "dicom.associate"
                else f"C-STORE to {called!r} refused: {reason}"
            )
            if action == "dicom.store":
                # Orthanc 1.10 drops a filtered instance but still answers Success to the
                # sender: the curators (or, for an unknown title, the admins) see it here
                self.arrivals.refused(project or "", called, calling, host, count, what)
            self.audit.record(
                user=USER,
                client="orthanc",
                action=action,
                decision="deny",
                reason=what,
                project=project,
                source=host,
                count=count,
                detail={"calling_aet": calling, "called_aet": called},
            )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s voxelhub-dicom %(message)s")
    with open(args[0]) as f:
        config = json.load(f)
    Worker(config).serve()


if __name__ == "__main__":
    main()
