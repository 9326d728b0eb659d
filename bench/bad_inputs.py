"""`python -m bench.bad_inputs`: every bad input we know of and the error it really gets.

* policies: each file of tests/data/invalid-policies, sent to a real kube-apiserver
  (`kubectl apply --dry-run=server`); the answer is the API server's own;
* operator refusals: policies the API server accepts and the operator's configuration does not
  allow (`nodesysctl.admission`, with the default flags); the pass reports them Invalid;
* agent inputs: the real agent CLI (`python -m nodesysctl.agent`) on a fake /proc/sys tree,
  with bad arguments, bad specs and bad node values; its result's status, errors, exit code;
* what the operator reads back: garbage termination messages and result annotations;
* what the API server and the cluster refuse: a real reconcile pass (`PolicyReconciler` with the
  real `Kube`) against the same kube-apiserver and its Job controller, with a policy whose agent
  Job the API server refuses, an identity or a quota that refuses it, no API server at all, and
  job namespaces that refuse the agent's pod; what the pass did (its POSTs, the status it wrote
  on a real policy, the node result it wrote) is the answer.

Prints a Markdown table (docs/reliability.md holds its output).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import ApiClient

from devcluster.cluster import DevCluster
from devcluster.waiting import wait_for
from nodesysctl import GROUP, KIND, PLURAL, VERSION
from nodesysctl.admission import admit
from nodesysctl.agent.contract import AgentResult
from nodesysctl.api import parse_spec
from nodesysctl.jobs import JobSettings, build_agent_spec
from nodesysctl.kube import Kube, KubeError
from nodesysctl.observed import job_facts_from_body
from nodesysctl.pacing import RestartLimiter
from nodesysctl.planning import NodeFacts, NodeResult
from nodesysctl.reconcile import PolicyReconciler, Snapshot
from nodesysctl.refusals import POD_CREATE_GRACE_SECONDS

from .harness import REPO

GOOD_SPEC = json.loads(build_agent_spec("p", parse_spec({})).model_dump_json(by_alias=True))
RANGE = "net/ipv4/ip_local_port_range"
RESERVED = "net/ipv4/ip_local_reserved_ports"


def _cell(text: str, limit: int = 220) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def policies(cluster: DevCluster) -> list[tuple[str, str, str]]:
    rows = []
    for path in sorted((REPO / "tests/data/invalid-policies").glob("*.yaml")):
        what = path.read_text().splitlines()[0].lstrip("# ")
        proc = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
        answer = proc.stderr.strip() or f"ACCEPTED: {proc.stdout.strip()}"
        answer = answer.split(" is invalid: ", 1)[-1].replace(f"{REPO}/", "")
        rows.append((f"policy `{path.stem}`", what, answer))
    return rows


def operator_refusals() -> list[tuple[str, str, str]]:
    cases = {
        "job.image not in --allowed-agent-images": {"image": "evil.example/rootkit:latest"},
        "job.priorityClassName not in --allowed-priority-classes": {
            "priorityClassName": "system-node-critical"
        },
    }
    rows = []
    for what, job in cases.items():
        [problem] = admit(parse_spec({"job": job}), JobSettings())
        answer = f"policy Invalid (condition, one InvalidSpec Event), no Job created: {problem}"
        rows.append(("operator refusal", what, answer))
    return rows


def _agent(args: list[str], tree: Path) -> str:
    log = tree / "termination-log"
    log.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "nodesysctl.agent", "--proc-sys", str(tree / "proc/sys"),
            "--proc-net", str(tree / "proc/net"), "--sysctl-dir", str(tree / "sysctl.d"),
            "--termination-log", str(log), *args]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    result = json.loads(log.read_text())
    errors = "; ".join(result["errors"]) or "; ".join(result["drift"] + result["actions"])
    return f"exit {proc.returncode}, {result['status']}: {errors}"


def _tree(base: Path, port_range: str = "32768\t60999", reserved: str = "") -> Path:
    tree = Path(tempfile.mkdtemp(dir=base))
    for rel, value in ((RANGE, port_range), (RESERVED, reserved)):
        path = tree / "proc/sys" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    net = tree / "proc/net"
    net.mkdir(parents=True)
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        (net / proto).write_text("  sl  local_address rem_address   st\n")
    (tree / "sysctl.d").mkdir()
    return tree


def agent_inputs() -> list[tuple[str, str, str]]:
    good = json.dumps(GOOD_SPEC)

    def spec(**change: object) -> list[str]:
        return ["--spec-json", json.dumps({**GOOD_SPEC, **change})]

    cases: list[tuple[str, str, list[str], dict[str, str]]] = [
        ("agent args", "no spec at all", [], {}),
        ("agent args", "an unknown argument", ["--spec-json", good, "--bogus"], {}),
        ("agent spec", "not JSON", ["--spec-json", "{"], {}),
        ("agent spec", "empty object", ["--spec-json", "{}"], {}),
        ("agent spec", "unknown mode", spec(mode="Fix"), {}),
        ("agent spec", "range min > max", spec(ephemeralRange={"min": 60999, "max": 32768}), {}),
        ("agent spec", "port 70000", spec(reservedRanges=[{"min": 70000, "max": 70000}]), {}),
        ("agent spec", "persistFile with a path", spec(persistFile="../../etc/passwd"), {}),
        ("agent spec", "an extra field", spec(extra=1), {}),
        ("node value", "range is `garbage`", ["--spec-json", good], {"range": "garbage"}),
        ("node value", "range has one number", ["--spec-json", good], {"range": "1024"}),
        ("node value", "range reversed", ["--spec-json", good], {"range": "60999\t32768"}),
        ("node value", "range beyond 65535", ["--spec-json", good], {"range": "1024\t70000"}),
        ("node value", "range file empty", ["--spec-json", good], {"range": ""}),
        ("node value", "reserved is `abc`", ["--spec-json", good], {"reserved": "abc"}),
        ("node value", "reserved `30000-`", ["--spec-json", good], {"reserved": "30000-"}),
        ("node value", "no such sysctl", ["--spec-json", good], {"missing": RANGE}),
        ("node value", "sysctl.d is a file", ["--spec-json", good], {"sysctl_d_file": "1"}),
        ("node value", "persist file not UTF-8", ["--spec-json", good], {"persist_bytes": "1"}),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as base:
        for kind, what, args, node in cases:
            tree = _tree(Path(base), node.get("range", "1024\t65000"), node.get("reserved", ""))
            if "missing" in node:
                (tree / "proc/sys" / node["missing"]).unlink()
            if "sysctl_d_file" in node:
                (tree / "sysctl.d").rmdir()
                (tree / "sysctl.d").write_text("")
            if "persist_bytes" in node:
                (tree / "sysctl.d" / "zz-nodesysctl-p.conf").write_bytes(b"\xff\xfe\x00")
            rows.append((kind, what, _agent(args, tree)))
    return rows


def read_back() -> list[tuple[str, str, str]]:
    rows = []
    messages = {
        "empty termination message": "",
        "truncated JSON": '{"status": "Compl',
        "not JSON": "Segmentation fault",
        "JSON of the wrong shape": '{"status": "Fine"}',
        "JSON list": "[1, 2]",
    }
    for what, text in messages.items():
        try:
            AgentResult.parse_termination_message(text)
            answer = "accepted"
        except ValueError as exc:
            answer = f"node Failed: unreadable agent result: {exc}"
        rows.append(("termination message", what, answer))
    for what, text in {
        "result annotation not JSON": "{",
        "result annotation, unknown status": '{"status":"Odd","specHash":"x","checkedAt":"now"}',
    }.items():
        parsed = NodeResult.from_annotation(text)
        answer = "counts as never checked: the node is checked again" if parsed is None else "?"
        rows.append(("node annotation", what, answer))
    return rows


class CountingKube(Kube):
    """The real API calls, counting the Job creates sent and keeping the node results written
    (the Nodes here are not real: their patches get 404, which a pass tolerates)."""

    def __init__(self, api: ApiClient) -> None:
        super().__init__(api)
        self.posts = 0
        self.node_results: list[str] = []
        self.lock = threading.Lock()

    def create_job(self, body: Mapping[str, Any]) -> bool:
        with self.lock:
            self.posts += 1
        return super().create_job(body)

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> None:
        self.node_results += [v for v in patch["metadata"]["annotations"].values() if v]
        super().patch_node(name, patch)


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def _object(kind: str, name: str, spec: Mapping[str, Any], api: str = "v1") -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, "spec": dict(spec)}


class Refusals:
    """Real passes of a real policy (one per case, its status really written) with their own
    job namespace; the Nodes are made up (nothing is scheduled: the bench cluster has none)."""

    NODES = tuple(NodeFacts(f"bench-n{i}", {}, "boot-1", {}) for i in range(3))

    def __init__(self, cluster: DevCluster) -> None:
        self.cluster = cluster
        self.cases = 0

    def _case(self, labels: Mapping[str, str], setup: list[dict[str, Any]]) -> tuple[str, str, str]:
        """(policy, its uid, its job namespace, with `labels` and the objects `setup`)."""
        self.cases += 1
        name = f"refusal-{self.cases}"
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name},
                "spec": {}}  # fmt: skip
        kubectl = self.cluster.kubectl
        kubectl("create", "-f", "-", input=yaml.safe_dump(body))
        uid = kubectl("get", PLURAL, name, "-o", "jsonpath={.metadata.uid}").stdout
        namespace = self.cluster.create_namespace(f"{name}-jobs", labels)
        for doc in setup:
            kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
            if doc["kind"] == "ResourceQuota":  # enforced once the quota controller counted
                self._wait_counted(namespace, doc["metadata"]["name"])
        return name, uid, namespace

    def _wait_counted(self, namespace: str, quota: str) -> None:
        def counted() -> bool:
            jsonpath = "jsonpath={.status.used}"
            return bool(
                self.cluster.kubectl("get", "quota", quota, "-n", namespace, "-o", jsonpath).stdout
            )

        wait_for(counted, timeout=30, what=f"quota {namespace}/{quota} counted")

    def _status(self, name: str) -> dict[str, Any]:
        out = self.cluster.kubectl("get", PLURAL, name, "-o", "json").stdout
        return dict(json.loads(out).get("status") or {})

    def _snapshot(self, name: str, uid: str, spec: Mapping[str, Any], **more: Any) -> Snapshot:
        fields: dict[str, Any] = {"name": name, "uid": uid, "generation": 1,
            "created": "2026-01-01T00:00:00Z", "spec": dict(spec), "status": self._status(name),
            "nodes": self.NODES, "jobs": [], "pod_outcomes": {}, "other_policies": []}  # fmt: skip
        return Snapshot(**{**fields, **more})

    def job_refused(
        self,
        spec: Mapping[str, Any],
        *,
        api: ApiClient | None = None,
        setup: list[dict[str, Any]] | None = None,
    ) -> str:
        """Two passes of a policy that plans three checks (through `api`, the admin's by
        default): the POSTs of each, and the policy's status after them."""
        name, uid, namespace = self._case({}, setup or [])
        kube = CountingKube(api or self.cluster.control_plane.api_client())
        reconciler = PolicyReconciler(kube, JobSettings(namespace), RestartLimiter(60, 10))
        posts, failed = [], ""
        for _ in range(2):
            before = kube.posts
            try:
                reconciler.run_once(self._snapshot(name, uid, spec), datetime.now(UTC))
            except KubeError as exc:
                failed = f"the pass fails ({exc})"
            posts.append(kube.posts - before)
        counted = f"{posts[0]} POST for 3 checks, {posts[1]} on the next pass"
        status = self._status(name)
        invalid, degraded = _condition(status, "Invalid"), _condition(status, "Degraded")
        if invalid.get("status") == "True":
            # The message names the refused Job, then quotes the API server.
            quoted = invalid["message"].split(": ", 1)[-1]
            return f"{counted}; policy Invalid ({invalid['reason']}): {quoted}"
        if degraded.get("status") == "True":
            return f"{counted} (backoff); Degraded ({degraded['reason']}): {degraded['message']}"
        return f"{counted} (backoff); no status written: {failed}"

    def pod_refused(self, labels: Mapping[str, str], setup: list[dict[str, Any]]) -> str:
        """A check's Job in a job namespace with `labels` and `setup`: the first pass creates
        it; once the Job controller reports FailedCreate, a pass past the grace judges it."""
        name, uid, namespace = self._case(labels, setup)
        kube = CountingKube(self.cluster.control_plane.api_client())
        reconciler = PolicyReconciler(kube, JobSettings(namespace), RestartLimiter(60, 10))
        nodes = self.NODES[:1]
        reconciler.run_once(self._snapshot(name, uid, {}, nodes=nodes), datetime.now(UTC))
        wait_for(
            lambda: kube.job_events(namespace, "FailedCreate"),
            timeout=30,
            what=f"FailedCreate in {namespace}",
        )
        path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
        jobs = [f for body in kube.rest.get(path)["items"] if (f := job_facts_from_body(body))]
        later = datetime.now(UTC) + timedelta(seconds=POD_CREATE_GRACE_SECONDS + 1)
        reconciler.run_once(self._snapshot(name, uid, {}, nodes=nodes, jobs=jobs), later)
        if not kube.node_results:
            return "waits: the node stays pending, the Job controller retries until the pod fits"
        result = NodeResult.from_annotation(kube.node_results[-1])
        assert result is not None
        kept = {body["metadata"]["name"] for body in kube.rest.get(path)["items"]}
        fate = "its Job kept" if kept & {job.name for job in jobs} else "its Job deleted"
        return f"node {result.status}: {result.message} ({fate}; counts against maxFailedNodes)"


TOLERATED = "bench.example/refused"  # a valid toleration key a site rule refuses


def _site_rule(reason: str | None) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy and its binding: Jobs may not tolerate `TOLERATED`."""
    admission = "admissionregistration.k8s.io/v1"
    rule = {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"],
            "resources": ["jobs"]}  # fmt: skip
    check = {
        "expression": "!object.spec.template.spec.?tolerations.orValue([])"
        f".exists(t, t.key == '{TOLERATED}')",
        "message": f"Jobs here may not tolerate {TOLERATED}",
        **({"reason": reason} if reason else {}),
    }
    name = "bench-site-rule"
    spec = {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [rule]},
            "validations": [check]}  # fmt: skip
    binding = {"policyName": name, "validationActions": ["Deny"]}
    return [
        _object("ValidatingAdmissionPolicy", name, spec, admission),
        _object("ValidatingAdmissionPolicyBinding", name, binding, admission),
    ]


def refusals(cluster: DevCluster) -> list[tuple[str, str, str]]:
    cases = Refusals(cluster)
    config = cluster.control_plane.api_client().configuration
    # An identity that may write the policy's status and Events, but not create Jobs.
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "bench-no-jobs"}, "rules": [
                {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]}  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(role))
    cluster.kubectl("create", "clusterrolebinding", "bench-no-jobs", "--clusterrole=bench-no-jobs",
                    "--user=bench-no-jobs")  # fmt: skip
    no_jobs_user = ApiClient(config, header_name="Impersonate-User", header_value="bench-no-jobs")
    nowhere = type(config)()
    nowhere.host, nowhere.verify_ssl, nowhere.retries = "https://127.0.0.1:9", False, 0
    no_jobs = _object("ResourceQuota", "no-jobs", {"hard": {"count/jobs.batch": "0"}})
    rows = []
    job = "agent Job"
    # A site rule no CRD can know: the admission policy's denial is 422 Invalid, or 403
    # Forbidden when its validation says `reason: Forbidden`.
    for reason, what in [
        (None, "a ValidatingAdmissionPolicy denies it (422: no `reason`)"),
        ("Forbidden", "a ValidatingAdmissionPolicy denies it, `reason: Forbidden` (403)"),
    ]:
        vap = _site_rule(reason)
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(vap))
        time.sleep(2)  # the API server loads the policy and its binding
        tolerations = [{"key": TOLERATED, "operator": "Exists"}]
        rows.append((job, what, cases.job_refused({"job": {"tolerations": tolerations}})))
        cluster.kubectl("delete", "-f", "-", "--wait", input=yaml.safe_dump_all(vap))
    rows.append(
        (
            job,
            "the operator may not create Jobs (RBAC, 403)",
            cases.job_refused({}, api=no_jobs_user),
        )
    )
    rows.append((job, "a ResourceQuota of 0 Jobs (403)", cases.job_refused({}, setup=[no_jobs])))
    rows.append((job, "no API server answers", cases.job_refused({}, api=ApiClient(nowhere))))

    pod = "agent pod"
    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}
    small = _object(
        "LimitRange", "small", {"limits": [{"type": "Container", "max": {"memory": "64Mi"}}]}
    )
    pending = {"nodeSelector": {"bench": "nowhere"}, "containers": [{"name": "c", "image": "x"}]}
    holder = _object("Pod", "holder", pending)  # never scheduled: holds the quota for good
    one_pod = _object("ResourceQuota", "one-pod", {"hard": {"pods": "1"}})
    zero_pods = _object("ResourceQuota", "no-pods", {"hard": {"pods": "0"}})
    rows.append(
        (pod, "Pod Security `restricted` on the job namespace", cases.pod_refused(restricted, []))
    )
    rows.append((pod, "a ResourceQuota of 0 pods", cases.pod_refused({}, [zero_pods])))
    rows.append(
        (pod, "a LimitRange: at most 64Mi of memory per container", cases.pod_refused({}, [small]))
    )
    rows.append(
        (pod, "a quota of 1 pod that another pod holds", cases.pod_refused({}, [one_pod, holder]))
    )
    return rows


def main() -> int:
    with DevCluster() as cluster:
        cluster.install_crds(REPO / "crds")
        rows = [*policies(cluster), *operator_refusals(), *agent_inputs(), *read_back(),
                *refusals(cluster)]  # fmt: skip
    print("| # | input | bad value | what happens |")
    print("| --- | --- | --- | --- |")
    for index, (kind, what, answer) in enumerate(rows, 1):
        print(f"| {index} | {kind} | {_cell(what, 80)} | {_cell(answer)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
