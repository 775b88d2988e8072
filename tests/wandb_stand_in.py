"""A loopback W&B server that speaks just enough of the protocol for `wandb sync` (0.31)
to upload an offline run, and records what it received.

What wandb-core asks while it replays a .wandb file:
- POST /graphql `RunResumeStatus` (does the run exist?): "no such run", or for a run it
  holds history of, its line counts and the tail of its history (a run resumed online);
- POST /graphql `UpsertBucket` (create or update the run: name, display name, group,
  job type, config as a JSON string): answered with the run, its project and entity;
- POST /files/ENTITY/PROJECT/RUN/file_stream: JSON {"files": {"wandb-history.jsonl":
  {"offset": n, "content": [row JSON, ...]}, "wandb-summary.json": ...}, "complete",
  "exitcode"}: history rows, summary, console lines, and the end of the run;
- POST /graphql `CreateRunFiles` (upload URLs for config.yaml, wandb-metadata.json, ...):
  answered with URLs on this server, which then receive a PUT of each file;
- artifacts: `ServerFeaturesQuery` (answered: no optional features), `CreateArtifact`
  (name, type, digest, the run that logs it; an existing version with the same digest is
  returned as it is, COMMITTED, as W&B deduplicates), `CreateArtifactManifest` (twice: then
  with an upload URL, which receives the manifest JSON by PUT), `CommitArtifact`, and
  `UseArtifact` (a run marks a version as its input); `CreateArtifactFiles` (upload URLs
  for the files of an artifact with content: a wandb.Table, an image), then a PUT each.
Any other GraphQL operation is recorded and answered with an empty `data` object, so a
test sees what it would have needed (see `unknown`).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ENTITY = "stand-in-entity"


@dataclass
class ReceivedRun:
    name: str
    project: str = ""
    display_name: str | None = None
    group: str | None = None
    job_type: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    complete: bool = False
    exitcode: int | None = None


@dataclass
class ReceivedArtifact:
    id: str
    name: str
    type: str
    digest: str
    run: str | None  # the run that logged it (or used it, for one logged "use after commit")
    metadata: dict[str, Any]
    manifest: dict[str, Any] | None = None
    committed: bool = False
    used_by: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # uploaded content (tables, images), by name


ARTIFACT_OPERATIONS = ("CreateArtifact", "CreateArtifactManifest", "UpdateArtifactManifest", "CreateArtifactFiles",
                       "CommitArtifact", "UseArtifact")


class StandInServer:
    def __init__(self) -> None:
        self.runs: dict[str, ReceivedRun] = {}
        self.artifacts: dict[str, ReceivedArtifact] = {}
        self.operations: list[str] = []
        self.unknown: list[str] = []
        self.auth_headers: set[str] = set()
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> StandInServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)

    def run(self, name: str) -> ReceivedRun:
        with self._lock:
            return self.runs.setdefault(name, ReceivedRun(name))

    # --- GraphQL ------------------------------------------------------------------
    def graphql(self, body: dict[str, Any]) -> dict[str, Any]:
        op = body.get("operationName") or _operation_name(body.get("query", ""))
        variables = body.get("variables") or {}
        self.operations.append(op)
        if op == "RunResumeStatus":
            return {"data": {"model": self._resume_status(variables)}}
        if op == "UpsertBucket":
            return {"data": {"upsertBucket": {"bucket": self._upsert(variables), "inserted": True}}}
        if op == "CreateRunFiles":
            run = variables["run"]
            files = [{"name": n, "uploadUrl": f"{self.url}/upload/{run}/{n}"} for n in variables["files"]]
            return {"data": {"createRunFiles": {"runID": f"id-{run}", "uploadHeaders": [], "files": files}}}
        if op == "ServerFeaturesQuery":
            return {"data": {"serverInfo": {"features": []}}}
        if op in ARTIFACT_OPERATIONS:
            return {"data": getattr(self, "_" + op)(variables)}
        self.unknown.append(op)
        return {"data": {}}

    def _resume_status(self, v: dict[str, Any]) -> dict[str, Any] | None:
        """A run this server holds history of, as W&B describes it to a run that resumes it
        (wandb-core starts the resumed run after the last `_step` of `historyTail`)."""
        with self._lock:
            run = self.runs.get(v.get("name", ""))
        if run is None or not run.history:
            return None  # no such run: a new one
        return {
            "id": "project-id", "name": run.project, "entity": {"id": "entity-id", "name": ENTITY},
            "bucket": {
                "id": f"id-{run.name}", "name": run.name, "displayName": run.display_name,
                "summaryMetrics": json.dumps(run.summary), "config": json.dumps({k: {"value": val} for k, val in run.config.items()}),
                "logLineCount": 0, "historyLineCount": len(run.history), "eventsLineCount": 0,
                "historyTail": json.dumps([json.dumps(row) for row in run.history[-10:]]), "eventsTail": "[]",
                # wandb-core resumes only a run that has started: one whose config has wandb's "t"
                "tags": [], "notes": None, "wandbConfig": json.dumps({"t": (run.config.get("_wandb") or {}).get("t", {})}),
            },
        }

    def _upsert(self, v: dict[str, Any]) -> dict[str, Any]:
        run = self.run(v["name"])
        run.project = v.get("project") or run.project or "uncategorized"
        for attr, key in (("display_name", "displayName"), ("group", "groupName"), ("job_type", "jobType")):
            if v.get(key):
                setattr(run, attr, v[key])
        if v.get("config"):
            run.config.update({k: item.get("value") for k, item in json.loads(v["config"]).items()})
        return {
            "id": f"id-{run.name}", "name": run.name, "displayName": run.display_name, "description": "",
            "config": json.dumps({k: {"value": val} for k, val in run.config.items()}), "sweepName": None,
            "project": {"id": "project-id", "name": run.project, "entity": {"id": "entity-id", "name": ENTITY}},
            "historyLineCount": len(run.history),
        }

    # --- artifacts ---------------------------------------------------------------------
    def _CreateArtifact(self, v: dict[str, Any]) -> dict[str, Any]:
        i = v["input"]
        with self._lock:
            for art in self.artifacts.values():  # same collection, same digest: that version (W&B deduplicates)
                if (art.name, art.type, art.digest) == (i["artifactCollectionName"], i["artifactTypeName"], i["digest"]):
                    state = "COMMITTED" if art.committed else "PENDING"
                    return {"createArtifact": {"artifact": {"id": art.id, "state": state,
                                                            "artifactSequence": {"latestArtifact": {"id": art.id}}}}}
            art_id = f"artifact-{len(self.artifacts)}"
            self.artifacts[art_id] = ReceivedArtifact(
                art_id, i["artifactCollectionName"], i["artifactTypeName"], i["digest"], i.get("runName"),
                json.loads(i["metadata"]) if i.get("metadata") else {})
        return {"createArtifact": {"artifact": {"id": art_id, "state": "PENDING", "artifactSequence": {"latestArtifact": None}}}}

    def _CreateArtifactManifest(self, v: dict[str, Any]) -> dict[str, Any]:
        return {"createArtifactManifest": {"artifactManifest": {"id": f"manifest-{v['artifactID']}", "file": {
            "id": f"file-{v['artifactID']}", "uploadUrl": f"{self.url}/artifact-manifest/{v['artifactID']}", "uploadHeaders": []}}}}

    def _UpdateArtifactManifest(self, v: dict[str, Any]) -> dict[str, Any]:
        art_id = v["artifactManifestID"].removeprefix("manifest-")
        return {"updateArtifactManifest": {"artifactManifest": {"id": v["artifactManifestID"], "file": {
            "id": f"file-{art_id}", "uploadUrl": f"{self.url}/artifact-manifest/{art_id}", "uploadHeaders": []}}}}

    def _CreateArtifactFiles(self, v: dict[str, Any]) -> dict[str, Any]:
        edges = []
        for f in v["input"]["artifactFiles"]:
            url = f"{self.url}/artifact-file/{f['artifactID']}/{f['name']}"
            edges.append({"node": {"storagePath": f"{f['artifactID']}/{f['name']}", "uploadUrl": url, "uploadHeaders": [],
                                   "uploadMultipartUrls": None, "artifact": {"id": f["artifactID"]}}})
        return {"createArtifactFiles": {"files": {"edges": edges}}}

    def _CommitArtifact(self, v: dict[str, Any]) -> dict[str, Any]:
        art = self.artifacts[v["artifactID"]]
        art.committed = True
        return {"commitArtifact": {"artifact": {"id": art.id, "digest": art.digest}}}

    def _UseArtifact(self, v: dict[str, Any]) -> dict[str, Any]:
        art = self.artifacts[v["input"]["artifactID"]]
        art.used_by.append(v["input"]["runName"])
        return {"useArtifact": {"artifact": {"id": art.id, "digest": art.digest}}}

    # --- file stream and uploads -----------------------------------------------------
    def file_stream(self, run_name: str, body: dict[str, Any]) -> dict[str, Any]:
        run = self.run(run_name)
        files = body.get("files") or {}
        for line in (files.get("wandb-history.jsonl") or {}).get("content", []):
            run.history.append(json.loads(line))
        for line in (files.get("wandb-summary.json") or {}).get("content", []):
            run.summary.update(json.loads(line))
        if body.get("complete"):
            run.complete = True
            run.exitcode = body.get("exitcode")
        return {"exitcode": None, "limits": {}}

    def upload(self, run_name: str, file_name: str, data: bytes) -> None:
        self.run(run_name).files[file_name] = data


def _operation_name(query: str) -> str:
    words = query.replace("(", " ").replace("{", " ").split()
    return words[1] if len(words) > 1 and words[0] in ("query", "mutation") else "?"


def _handler(server: StandInServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if not size:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _reply(self, payload: Any = None, status: int = 200) -> None:
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = self._body()
            if self.headers.get("Authorization"):
                server.auth_headers.add(self.headers["Authorization"])
            parts = self.path.strip("/").split("/")
            if parts[0] == "graphql":
                self._reply(server.graphql(json.loads(body)))
            elif parts[0] == "files" and parts[-1] == "file_stream":
                self._reply(server.file_stream(parts[-2], json.loads(body)))
            else:
                server.unknown.append(f"POST {self.path}")
                self._reply({}, status=404)

        def do_PUT(self) -> None:
            body = self._body()
            parts = self.path.strip("/").split("/", 2)
            if parts[0] == "upload" and len(parts) == 3:
                server.upload(parts[1], parts[2], body)
                self._reply()
            elif parts[0] == "artifact-manifest" and len(parts) == 2:
                server.artifacts[parts[1]].manifest = json.loads(body)
                self._reply()
            elif parts[0] == "artifact-file" and len(parts) == 3:
                art, name = parts[1], parts[2]
                server.artifacts[art].files[name] = body
                self._reply()
            else:
                server.unknown.append(f"PUT {self.path}")
                self._reply({}, status=404)

        def do_GET(self) -> None:
            server.unknown.append(f"GET {self.path}")
            self._reply({}, status=404)

    return Handler
