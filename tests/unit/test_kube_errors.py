"""Every failed API call leaves `nodesysctl.kube` as one `KubeError`, mapped in one place
(`Rest.request`) from the API server's Status body, or from no answer at all. A fake `ApiClient`
stands in for the wire; tests/integration/test_kube.py shows the real API server's answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from nodesysctl.kube import Kube, KubeError
from nodesysctl.refusals import Refusal

RBAC = 'jobs.batch is forbidden: User "system:serviceaccount:x:y" cannot create resource "jobs"'


class Response:
    """What `ApiClient.call_api` returns (a `RESTResponse`), reduced to what is read."""

    def __init__(self, status: int, reason: str, data: bytes) -> None:
        self.status = status
        self.reason = reason
        self.data = data
        self.headers: dict[str, str] = {"Content-Type": "application/json"}

    def read(self) -> bytes:
        return self.data


class FakeApiClient:
    def __init__(self, answer: Response | BaseException) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []

    def param_serialize(self, **request: Any) -> tuple[str, str, dict[str, str], Any, Any]:
        self.requests.append(request)
        return request["method"], request["resource_path"], request["header_params"], None, None

    def call_api(self, *_: Any, **__: Any) -> Response:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def status_body(code: int, reason: str, message: str) -> bytes:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason, "code": code}  # fmt: skip
    return json.dumps(body).encode()


def kube(answer: Response | BaseException) -> Kube:
    return Kube(FakeApiClient(answer))  # type: ignore[arg-type]


JOB = {"metadata": {"name": "nsc-p-1-2", "namespace": "jobs"}}


def test_a_refusal_carries_the_status_bodys_reason_and_message() -> None:
    with pytest.raises(KubeError) as raised:
        kube(Response(403, "Forbidden", status_body(403, "Forbidden", RBAC))).create_job(JOB)
    error = raised.value
    assert isinstance(error, ApiException)  # what callers of the client expect keeps working
    assert (error.status, error.reason, error.message) == (403, "Forbidden", RBAC)
    assert json.loads(error.body or "")["code"] == 403
    assert error.refusal.refusal == Refusal.TRANSIENT
    assert str(error) == f"403 Forbidden: {RBAC}"  # one line for the logs


def test_an_answer_without_a_status_body_keeps_its_text() -> None:
    with pytest.raises(KubeError) as raised:
        kube(Response(503, "Service Unavailable", b"etcd cluster is unavailable")).list_policies()
    assert (raised.value.status, raised.value.reason) == (503, "Service Unavailable")
    assert raised.value.message == "etcd cluster is unavailable"


@pytest.mark.parametrize(
    "failure",
    [
        urllib3.exceptions.MaxRetryError(None, "/apis", reason="connection refused"),  # type: ignore[arg-type]
        urllib3.exceptions.ProtocolError("Connection aborted."),
        ConnectionResetError(104, "Connection reset by peer"),
        ApiException(status=0, reason="SSLError\ncertificate verify failed"),  # the client's own
    ],
)
def test_no_answer_is_status_0_and_never_the_users_fault(failure: BaseException) -> None:
    with pytest.raises(KubeError) as raised:
        kube(failure).create_job(JOB)
    assert raised.value.status == 0
    assert raised.value.refusal.refusal == Refusal.TRANSIENT
    assert raised.value.refusal.condition_reason == "APIUnreachable"
    assert raised.value.__cause__ is failure


def test_the_errors_each_call_tolerates_are_still_tolerated() -> None:
    exists = Response(409, "Conflict", status_body(409, "AlreadyExists", "jobs.batch exists"))
    assert kube(exists).create_job(JOB) is False
    gone = Response(404, "Not Found", status_body(404, "NotFound", "not found"))
    kube(gone).delete_job("jobs", "nsc-p-1-2")
    kube(gone).patch_node("n1", {"metadata": {}})
    kube(gone).patch_policy_status("p", {})


def test_failed_create_events_are_listed_by_field_selector() -> None:
    answer = Response(200, "OK", json.dumps({"items": [{"reason": "FailedCreate"}]}).encode())
    client = FakeApiClient(answer)
    assert Kube(client).job_events("jobs", "FailedCreate") == [{"reason": "FailedCreate"}]  # type: ignore[arg-type]
    (request,) = client.requests
    assert (request["method"], request["resource_path"]) == (
        "GET",
        "/api/v1/namespaces/jobs/events",
    )
    assert request["query_params"] == [
        ("fieldSelector", "involvedObject.kind=Job,reason=FailedCreate")
    ]
