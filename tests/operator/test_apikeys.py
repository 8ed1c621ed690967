"""ApiKeys end to end: the operator -- a real ``putplace-operator`` process with only the chart's
RBAC -- registers keys at a real ``putplace-api`` process, delivers them in Secrets, rotates and
revokes them, survives an unreachable API and a crash, and never leaves an object stuck.

The API runs on 127.0.0.1, so the operator reaches it through ``PUTPLACE_OPERATOR_API_URL_TEMPLATE``
(as an operator outside the cluster would, through a port-forward); each test's instance gets the
API's admin key through an admin-key Secret made before the instance, which the operator keeps.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import ADMIN_KEY
from tests.operator.conftest import OperatorProcess, admin_secret, condition
from tests.processes import ApiProcess, metric
from tests.servers import KubeCluster
from tests.waiting import wait_until

INSTANCE = "pp"
GRACE = 8  # seconds a rotated-out key keeps working


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    api = ApiProcess(tmp_path_factory.mktemp("api"))
    api.start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def operator(
    api: ApiProcess, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        operator_kubeconfig,
        tmp_path_factory.mktemp("operator"),
        env={
            "PUTPLACE_OPERATOR_API_URL_TEMPLATE": api.url,
            "PUTPLACE_OPERATOR_RECONCILE_SECONDS": "1",
            "PUTPLACE_OPERATOR_ROTATION_GRACE_SECONDS": str(GRACE),
            "PUTPLACE_OPERATOR_RETRY_MIN_SECONDS": "0.5",
            "PUTPLACE_OPERATOR_RETRY_MAX_SECONDS": "2",
            "PUTPLACE_OPERATOR_DELETE_RETRIES": "2",
        },
    )
    op.start()
    yield op
    op.stop()
    op.check_log()


@pytest.fixture
def instance(crds: KubeCluster, namespace: str, operator: OperatorProcess) -> str:
    """A PutPlaceInstance (no agents) whose admin key is the test API's; returns its namespace."""
    crds.apply(
        admin_secret(INSTANCE, namespace, ADMIN_KEY),
        {"apiVersion": "putplace.io/v1alpha1", "kind": "PutPlaceInstance",
         "metadata": {"name": INSTANCE}, "spec": {"agent": {"enabled": False}}},
        namespace=namespace,
    )  # fmt: skip
    return namespace


def apikey(name: str, *scopes: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "putplace.io/v1alpha1",
        "kind": "ApiKey",
        "metadata": {"name": name},
        "spec": {"instanceRef": {"name": spec.pop("instance", INSTANCE)}, "scopes": list(scopes), **spec},
    }


def get_key(kube: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.get("apikey", name, "-n", namespace))


def wait_ready(kube: KubeCluster, namespace: str, name: str, timeout: float = 30) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = get_key(kube, namespace, name)
        ok = condition(obj, "Ready") == ("True", "KeyIssued")
        return obj if ok and obj["status"]["observedGeneration"] == obj["metadata"]["generation"] else None

    return wait_until(ready, timeout, f"ApiKey {name} Ready")


def wait_condition(
    kube: KubeCluster, namespace: str, name: str, kind: str, expected: tuple[str, str], timeout: float = 30
) -> dict[str, Any]:
    """Wait until condition ``kind`` of an ApiKey is (status, reason); return the object."""

    def check() -> dict[str, Any] | None:
        obj = get_key(kube, namespace, name)
        return obj if condition(obj, kind) == expected else None

    return wait_until(check, timeout, f"ApiKey {name}: {kind}={expected}")


def secret_key(kube: KubeCluster, namespace: str, secret: str) -> str | None:
    found = kube.kubectl("get", "secret", secret, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        return None
    return base64.b64decode(json.loads(found.stdout)["data"]["api-key"]).decode()


def status(api: ApiProcess, key: str | None, method: str, path: str, **kwargs: Any) -> int:
    headers = {"X-API-Key": key} if key else {}
    return httpx.request(method, api.url + path, headers=headers, timeout=10, **kwargs).status_code


def live_keys(api: ApiProcess, uid: str) -> list[dict[str, Any]]:
    """The active keys an ApiKey (by uid) has at the API."""
    with api.http() as c:
        keys = c.get("/api_keys").raise_for_status().json()
    return [k for k in keys if k["name"].startswith(uid + " ") and k["is_active"]]


FILE = {
    "filepath": "/x", "hostname": "h", "ip_address": "127.0.0.1", "sha256": "0" * 64, "file_size": 1,
    "file_mode": 33188, "file_uid": 0, "file_gid": 0, "file_mtime": 1.0, "file_atime": 1.0, "file_ctime": 1.0,
}  # fmt: skip


def test_a_key_is_issued_in_a_secret_and_works_with_its_scopes(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    crds.apply(
        apikey("ci", "read", "write", description="CI uploads", rateLimit={"requestsPerSecond": 50, "burst": 100},
               secretName="ci-key"),
        namespace=instance,
    )  # fmt: skip
    obj = wait_ready(crds, instance, "ci")
    secret = crds.get("secret", "ci-key", "-n", instance)
    key = base64.b64decode(secret["data"]["api-key"]).decode()
    assert base64.b64decode(secret["data"]["api-url"]).decode() == f"http://{INSTANCE}-api.{instance}.svc:80"
    assert [(r["kind"], r["uid"]) for r in secret["metadata"]["ownerReferences"]] == [
        ("ApiKey", obj["metadata"]["uid"])
    ]
    assert key not in json.dumps(obj)  # only the id is in the status
    assert obj["status"]["secretName"] == "ci-key" and obj["status"]["rotation"] == 0

    # At the API: one live key, the one in the Secret, made as the spec says.
    (made,) = live_keys(api, obj["metadata"]["uid"])
    assert made["_id"] == obj["status"]["keyId"] and key.startswith(made["key_prefix"])
    assert (sorted(made["scopes"]), made["rate_limit"], made["rate_limit_burst"]) == (["read", "write"], 50, 100)
    assert made["description"] == "CI uploads"

    # The key does what its scopes allow, and nothing more.
    assert status(api, key, "GET", "/files") == 200
    assert status(api, key, "POST", "/put_file", json=FILE) == 201
    assert status(api, key, "GET", "/api_keys") == 403

    # kubectl shows the key's id, never the key.
    table = crds.kubectl("get", "ppkey", "ci", "-n", instance).stdout
    assert obj["status"]["keyId"] in table and key not in table

    # The operator counts what it did.
    text = httpx.get(operator.metrics_url, timeout=5).text
    assert metric(text, 'putplace_operator_reconciles_total{kind="ApiKey",result="success"}') >= 1
    assert metric(text, 'putplace_operator_objects{kind="ApiKey",ready="true"}') >= 1


def test_a_key_limited_to_a_node_with_a_quota(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    """hostnames, pathPrefixes and quota reach the API; changing them makes a new key at once."""
    limits = {"hostnames": ["node-a"], "pathPrefixes": ["/var/log/"], "quota": {"maxBytes": 10**9, "maxFiles": 3}}
    crds.apply(apikey("node-a", "read", "write", **limits), namespace=instance)
    obj = wait_ready(crds, instance, "node-a")
    key = secret_key(crds, instance, "node-a")
    (made,) = live_keys(api, obj["metadata"]["uid"])
    assert (made["hostnames"], made["path_prefixes"]) == (["node-a"], ["/var/log"])
    assert (made["max_bytes"], made["max_files"], made["used_bytes"], made["used_files"]) == (10**9, 3, 0, 0)
    assert status(api, key, "POST", "/put_file", json={**FILE, "hostname": "node-a", "filepath": "/var/log/a"}) == 201
    assert status(api, key, "POST", "/put_file", json={**FILE, "hostname": "node-b", "filepath": "/var/log/a"}) == 403
    assert status(api, key, "POST", "/put_file", json={**FILE, "hostname": "node-a", "filepath": "/etc/a"}) == 403

    # Widening the hosts is a new key too (keys are immutable), the old one revoked at once.
    patch = '{"spec": {"hostnames": ["node-a", "node-b"]}}'
    crds.kubectl("patch", "apikey", "node-a", "-n", instance, "--type=merge", "-p", patch)
    second = wait_until(lambda: (k := secret_key(crds, instance, "node-a")) != key and k, 20, "a new key")
    wait_until(lambda: status(api, key, "GET", "/files") == 401, 10, "the old key revoked")
    assert (
        status(api, second, "POST", "/put_file", json={**FILE, "hostname": "node-b", "filepath": "/var/log/b"}) == 201
    )
    (made,) = live_keys(api, obj["metadata"]["uid"])
    assert made["hostnames"] == ["node-a", "node-b"] and made["max_files"] == 3

    # What the CRD's schema cannot check is a permanent refusal, not a retry loop or a crash.
    crds.kubectl(
        "patch", "apikey", "node-a", "-n", instance, "--type=merge", "-p", '{"spec": {"hostnames": ["a\\u0000b"]}}'
    )
    degraded = wait_condition(crds, instance, "node-a", "Degraded", ("True", "KeyRejected"))
    message = next(c["message"] for c in degraded["status"]["conditions"] if c["type"] == "Degraded")
    assert "hostnames" in message and "NUL" in message
    assert secret_key(crds, instance, "node-a") == second  # the working key stays


def test_rotation_issues_a_new_key_and_revokes_the_old_one_after_the_grace_period(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    crds.apply(apikey("agent", "write"), namespace=instance)
    first_id = wait_ready(crds, instance, "agent")["status"]["keyId"]
    first = secret_key(crds, instance, "agent")
    assert first is not None

    crds.kubectl("patch", "apikey", "agent", "-n", instance, "--type=merge", "-p", '{"spec": {"rotation": 1}}')
    rotated = time.monotonic()
    second = wait_until(lambda: (k := secret_key(crds, instance, "agent")) != first and k, 20, "a new key")
    obj = wait_ready(crds, instance, "agent")
    assert obj["status"]["rotation"] == 1 and obj["status"]["keyId"] != first_id
    assert obj["status"]["previousKeyId"] == first_id and obj["status"]["revokeAfter"]
    # Both keys work during the grace period ...
    assert status(api, second, "POST", "/put_file", json=FILE) == 201
    if time.monotonic() - rotated < GRACE - 1:
        assert status(api, first, "POST", "/put_file", json=FILE) == 201
    # ... then only the new one.
    wait_until(lambda: status(api, first, "POST", "/put_file", json=FILE) == 401, 30, "the old key revoked")
    assert status(api, second, "POST", "/put_file", json=FILE) == 201
    wait_until(lambda: "previousKeyId" not in get_key(crds, instance, "agent")["status"], 10, "previousKeyId cleared")
    assert [k["_id"] for k in live_keys(api, obj["metadata"]["uid"])] == [obj["status"]["keyId"]]

    # The rotation counter only grows (CEL rule in the CRD).
    refused = crds.kubectl(
        "patch", "apikey", "agent", "-n", instance, "--type=merge", "-p", '{"spec": {"rotation": 0}}', check=False
    )
    assert refused.returncode != 0 and "rotation can only increase" in refused.stderr


def test_a_narrower_scope_takes_effect_at_once(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    crds.apply(apikey("reader", "read", "write"), namespace=instance)
    wait_ready(crds, instance, "reader")
    first = secret_key(crds, instance, "reader")
    crds.kubectl("patch", "apikey", "reader", "-n", instance, "--type=merge", "-p", '{"spec": {"scopes": ["read"]}}')
    second = wait_until(lambda: (k := secret_key(crds, instance, "reader")) != first and k, 20, "a new key")
    # No grace for a changed key: the old one may do what the new spec took away.
    wait_until(lambda: status(api, first, "GET", "/files") == 401, 10, "the old key revoked")
    assert status(api, second, "GET", "/files") == 200
    assert status(api, second, "POST", "/put_file", json=FILE) == 403


def test_a_secret_deleted_or_edited_by_hand_gets_a_new_key(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    crds.apply(apikey("app", "read"), namespace=instance)
    wait_ready(crds, instance, "app")
    first = secret_key(crds, instance, "app")
    crds.kubectl("delete", "secret", "app", "-n", instance)
    second = wait_until(lambda: (k := secret_key(crds, instance, "app")) != first and k, 20, "a new Secret")
    wait_until(lambda: status(api, first, "GET", "/files") == 401, 10, "the lost key revoked")
    assert status(api, second, "GET", "/files") == 200

    # A key overwritten by hand is not a key the API knows: replaced too.
    bogus = base64.b64encode(b"pp_not_a_real_key").decode()
    crds.kubectl("patch", "secret", "app", "-n", instance, "-p", json.dumps({"data": {"api-key": bogus}}))
    third = wait_until(
        lambda: (k := secret_key(crds, instance, "app")) not in (second, "pp_not_a_real_key") and k, 20, "a new key"
    )
    assert status(api, third, "GET", "/files") == 200
    wait_until(lambda: status(api, second, "GET", "/files") == 401, 10, "the replaced key revoked")


def test_deleting_an_apikey_revokes_its_key(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    crds.apply(apikey("temp", "read"), namespace=instance)
    uid = wait_ready(crds, instance, "temp")["metadata"]["uid"]
    key = secret_key(crds, instance, "temp")
    assert status(api, key, "GET", "/files") == 200
    crds.kubectl("delete", "apikey", "temp", "-n", instance, "--timeout=30s")
    assert status(api, key, "GET", "/files") == 401
    assert live_keys(api, uid) == []
    wait_until(lambda: secret_key(crds, instance, "temp") is None, 30, "the Secret garbage-collected")


def test_an_unreachable_api_leaves_the_key_not_ready_and_it_recovers_without_a_retry_storm(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    errors_before = _errors(operator, "ApiUnreachable")
    api.stop()
    try:
        crds.apply(apikey("later", "read"), namespace=instance)
        obj = wait_condition(crds, instance, "later", "Ready", ("False", "ApiUnreachable"))
        message = next(c["message"] for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert api.url in message
        assert condition(obj, "Progressing") == ("True", "ApiUnreachable")
        assert condition(obj, "Degraded") == ("False", "AsExpected")
        outage = time.monotonic()
        time.sleep(6)
    finally:
        api.start()
    attempts = _errors(operator, "ApiUnreachable") - errors_before
    elapsed = time.monotonic() - outage + 6
    # Backoff (0.5 s doubling to 2 s) plus the 1 s timer: a handful per second at most, never a loop.
    assert 1 <= attempts <= 3 * elapsed + 5, attempts
    wait_ready(crds, instance, "later")
    assert status(api, secret_key(crds, instance, "later"), "GET", "/files") == 200


def _errors(operator: OperatorProcess, reason: str) -> float:
    try:
        return metric(
            httpx.get(operator.metrics_url, timeout=5).text,
            f'putplace_operator_reconcile_errors_total{{kind="ApiKey",reason="{reason}"}}',
        )
    except KeyError:
        return 0.0


def test_a_secret_name_taken_by_someone_else_is_a_permanent_error(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    crds.kubectl("create", "secret", "generic", "taken", "-n", instance, "--from-literal=password=hunter2")
    crds.apply(apikey("clash", "read", secretName="taken"), namespace=instance)
    obj = wait_condition(crds, instance, "clash", "Degraded", ("True", "SecretConflict"))
    assert condition(obj, "Ready") == ("False", "SecretConflict")
    assert crds.get("secret", "taken", "-n", instance)["data"] == {"password": base64.b64encode(b"hunter2").decode()}
    assert live_keys(api, obj["metadata"]["uid"]) == []
    # Once the name is free, the key is made (the periodic reconcile notices).
    crds.kubectl("delete", "secret", "taken", "-n", instance)
    wait_ready(crds, instance, "clash")


def test_the_finalizer_lets_go_when_the_instance_is_gone(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    crds.apply(apikey("orphan", "read", instance="no-such-instance"), namespace=instance)
    wait_condition(crds, instance, "orphan", "Ready", ("False", "InstanceNotFound"))
    crds.kubectl("delete", "apikey", "orphan", "-n", instance, "--timeout=30s")

    crds.apply(apikey("survivor", "read"), namespace=instance)
    wait_ready(crds, instance, "survivor")
    crds.kubectl("delete", "ppi", INSTANCE, "-n", instance, "--timeout=60s")
    crds.kubectl("delete", "apikey", "survivor", "-n", instance, "--timeout=30s")
    assert crds.kubectl("get", "apikey", "-n", instance, "-o", "name").stdout.strip() == ""


def test_deleting_an_instance_revokes_every_key_made_for_it(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    """Agent, metrics and user keys, orphans of the namespace and the generated admin key stop
    working when their instance is deleted (its database may outlive it); a neighbour instance's
    keys sharing that database keep working."""
    crds.apply(
        {"apiVersion": "putplace.io/v1alpha1", "kind": "PutPlaceInstance", "metadata": {"name": "gone"},
         "spec": {"metrics": {"serviceMonitor": True}}},
        namespace=instance,
    )  # fmt: skip
    # As if the API had bootstrapped with the admin key the operator generated (its Secret, owned
    # by the instance): the test API's own admin key stands in for nobody's.
    wait_until(lambda: secret_key(crds, instance, "gone-admin-key"), 20, "the generated admin-key Secret")
    with api.http() as c:
        admin = c.post("/api_keys", json={"name": "bootstrap admin", "scopes": ["admin"]}).json()["api_key"]
        ghost = c.post("/api_keys", json={"name": f"{uuid.uuid4()} {instance}/ghost", "scopes": ["read"]}).json()
    data = json.dumps({"data": {"api-key": base64.b64encode(admin.encode()).decode()}})
    crds.kubectl("patch", "secret", "gone-admin-key", "-n", instance, "-p", data)
    crds.apply(apikey("user", "read", instance="gone"), apikey("neighbour", "read"), namespace=instance)
    uids = [wait_ready(crds, instance, n)["metadata"]["uid"] for n in ("gone-agent", "gone-metrics", "user")]
    wait_ready(crds, instance, "neighbour")
    made = {s: secret_key(crds, instance, s) for s in ("gone-agent-key", "gone-metrics-key", "user", "neighbour")}
    assert status(api, made["user"], "GET", "/files") == 200 and status(api, admin, "GET", "/api_keys") == 200

    crds.kubectl("delete", "ppi", "gone", "-n", instance, "--timeout=30s")
    for name in ("gone-agent-key", "gone-metrics-key", "user"):
        assert status(api, made[name], "GET", "/metrics") == 401, name
    assert status(api, admin, "GET", "/api_keys") == 401
    assert status(api, ghost["api_key"], "GET", "/files") == 401
    assert all(live_keys(api, uid) == [] for uid in uids)
    assert status(api, made["neighbour"], "GET", "/files") == 200
    assert f"PutPlaceInstance {instance}/gone released: 5 keys revoked" in operator.log()
    # The agent's and Prometheus' ApiKeys go with the instance; the user's lets go at once.
    left = ("get", "apikey", "gone-agent", "gone-metrics", "-n", instance, "--ignore-not-found", "-o", "name")
    wait_until(lambda: not crds.kubectl(*left).stdout.strip(), 30, "the instance's ApiKeys gone")
    crds.kubectl("delete", "apikey", "user", "-n", instance, "--timeout=30s")


def test_an_instance_whose_api_is_unreachable_is_released_after_bounded_retries(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    crds.apply(apikey("stays", "read"), namespace=instance)
    wait_ready(crds, instance, "stays")
    api.stop()
    try:
        # Released after 3 attempts (the log line below), well within kubectl's own 60 s.
        crds.kubectl("delete", "ppi", INSTANCE, "-n", instance, "--timeout=60s")
    finally:
        api.start()
    assert f"PutPlaceInstance {instance}/{INSTANCE} deleted, but its keys could not be revoked after 3 attempts" in (
        operator.log()
    )
    crds.kubectl("delete", "apikey", "stays", "-n", instance, "--timeout=30s")


def test_the_operator_converges_after_a_crash_mid_reconcile(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    # A key left behind by an interrupted reconcile (made at the API, never recorded) is revoked.
    crds.apply(apikey("steady", "read"), namespace=instance)
    obj = wait_ready(crds, instance, "steady")
    uid = obj["metadata"]["uid"]
    with api.http() as c:
        stray = c.post("/api_keys", json={"name": f"{uid} {instance}/steady", "scopes": ["read"]}).json()
    wait_until(lambda: [k["_id"] for k in live_keys(api, uid)] == [obj["status"]["keyId"]], 20, "the stray revoked")
    assert status(api, stray["api_key"], "GET", "/files") == 401

    # SIGKILL while many keys are being made, then a restart: each ends with exactly one live key,
    # the one its Secret and status name.
    names = [f"burst-{n}" for n in range(15)]
    crds.apply(*(apikey(n, "read") for n in names), namespace=instance)
    wait_until(lambda: any(secret_key(crds, instance, n) for n in names), 30, "the first Secret")
    operator.kill()
    operator.start()
    for name in names:
        obj = wait_ready(crds, instance, name, timeout=60)
        key = secret_key(crds, instance, name)
        (live,) = live_keys(api, obj["metadata"]["uid"])
        assert live["_id"] == obj["status"]["keyId"] and key is not None and key.startswith(live["key_prefix"])
        assert status(api, key, "GET", "/files") == 200


def test_no_key_appears_in_logs_metrics_status_or_events(
    api: ApiProcess, operator: OperatorProcess, crds: KubeCluster, instance: str
) -> None:
    """Keys live in Secrets and nowhere else: not in the operator's or the API's logs, not in
    either's metrics, not in the objects' status, not in the namespace's events."""
    crds.apply(apikey("one", "read"), apikey("two", "write", secretName="two-key"), namespace=instance)
    wait_ready(crds, instance, "one")
    wait_ready(crds, instance, "two")
    crds.kubectl("patch", "apikey", "one", "-n", instance, "--type=merge", "-p", '{"spec": {"rotation": 1}}')
    wait_until(lambda: get_key(crds, instance, "one")["status"].get("rotation") == 1, 20, "the rotation")
    keys = {ADMIN_KEY}
    for secret in ("one", "two-key", f"{INSTANCE}-admin-key"):
        key = secret_key(crds, instance, secret)
        assert key is not None
        keys.add(key)
    # Use them, including wrongly, so that every path that might echo a key has run.
    for key in keys:
        status(api, key, "GET", "/files")
        status(api, key + "x", "GET", "/files")
    metrics_key = api.new_key("metrics")
    places = {
        "operator log": operator.log(),
        "API log": (api.workdir / "api.log").read_text(errors="replace"),
        "operator metrics": httpx.get(operator.metrics_url, timeout=5).text,
        "API metrics": httpx.get(api.url + "/metrics", headers={"X-API-Key": metrics_key}, timeout=5).text,
        "objects": crds.kubectl("get", "apikeys,putplaceinstances", "-n", instance, "-o", "json").stdout,
        "events": crds.kubectl("get", "events", "-n", instance, "-o", "json").stdout,
    }
    for key in keys:
        for place, text in places.items():
            assert key not in text and key[:16] not in text, f"a key (or its first 16 characters) is in the {place}"
