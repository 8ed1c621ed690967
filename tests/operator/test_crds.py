"""The CRDs in crds/ against a real API server: established, defaulted, validated, printed, explained.

Every test that touches the cluster works in its own fresh namespace (fixture ``namespace``);
the CRDs are applied once per session with ``kubectl apply -f crds/`` (fixture ``crds``).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with uvicorn[standard]; no stubs installed

from tests.servers import KubeCluster
from tests.waiting import wait_until

from .conftest import CRD_DIR, CRD_NAMES

GROUP = "putplace.io"
API_VERSION = f"{GROUP}/v1alpha1"
EXAMPLES = CRD_DIR / "examples"

# What an empty spec means (image tags are placeholders until images are published).
EMPTY_SPEC_DEFAULTS = {
    "replicas": 1,
    "image": {"repository": "ghcr.io/putplace/putplace-api", "tag": "0.1.0", "pullPolicy": "IfNotPresent"},
    "database": {"sqlite": {"storageSize": "1Gi"}},
    "storage": {"local": {"storageSize": "10Gi"}},
    "metrics": {"serviceMonitor": False},
    "agent": {
        "enabled": True,
        "image": {"repository": "ghcr.io/putplace/putplace-agent", "tag": "0.1.0", "pullPolicy": "IfNotPresent"},
        "hostPaths": ["/var/log"],
        "rescanIntervalSeconds": 3600,
    },
}


def instance(name: str = "pp", spec: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "PutPlaceInstance", "metadata": {"name": name}}
    if spec is not None:
        obj["spec"] = dict(spec)
    return {**obj, **extra}


def api_key(name: str = "key", spec: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "ApiKey", "metadata": {"name": name}}
    if spec is not None:
        obj["spec"] = dict(spec)
    return {**obj, **extra}


KEY_SPEC = {"instanceRef": {"name": "pp"}, "scopes": ["read", "write"]}
HOOK_SPEC = {"instanceRef": {"name": "pp"}, "url": "https://hooks.example.com/pp"}


def webhook(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "WebhookSubscription", "metadata": {"name": "hook"}, "spec": dict(spec)}


MONGO_S3 = {
    "database": {"mongodb": {"uriSecretRef": {"name": "mongo"}}},
    "storage": {"s3": {"bucket": "contents"}},
}


def create(kube: KubeCluster, namespace: str, obj: Mapping[str, Any]) -> subprocess.CompletedProcess[str]:
    """``kubectl create`` one object; the result is returned unchecked."""
    return kube.kubectl("create", f"--namespace={namespace}", "-f", "-", input=json.dumps(obj), check=False)


def patch(
    kube: KubeCluster, namespace: str, resource: str, body: Mapping[str, Any], *args: str
) -> subprocess.CompletedProcess[str]:
    """``kubectl patch --type=merge``; the result is returned unchecked."""
    return kube.kubectl(
        "patch", resource, f"--namespace={namespace}", "--type=merge", "-p", json.dumps(body), *args, check=False
    )


def crd_documents() -> Iterator[dict[str, Any]]:
    for path in sorted(CRD_DIR.glob("*.yaml")):
        yield from yaml.safe_load_all(path.read_text())


def table(kube: KubeCluster, *args: str) -> list[list[str]]:
    """``kubectl get`` in the human table format, split into cells (columns are 2+ spaces apart)."""
    lines = kube.kubectl("get", *args).stdout.splitlines()
    return [re.split(r"\s{2,}", line.strip()) for line in lines if line.strip()]


# --------------------------------------------------------------------------- the files themselves


def test_crds_directory_holds_exactly_the_three_crds() -> None:
    documents = list(crd_documents())
    assert sorted(d["metadata"]["name"] for d in documents) == sorted(CRD_NAMES)
    for crd in documents:
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["kind"] == "CustomResourceDefinition"
        spec = crd["spec"]
        assert spec["group"] == GROUP
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["categories"] == ["putplace"]
        assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
        version = spec["versions"][0]
        assert version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}
    # kubectl apply -f crds/ reads only *.yaml/*.yml/*.json of the directory itself: not examples/.
    assert {p.name for p in CRD_DIR.iterdir() if p.suffix in (".yaml", ".yml", ".json")} == {
        f"{GROUP}_putplaceinstances.yaml",
        f"{GROUP}_apikeys.yaml",
        f"{GROUP}_webhooksubscriptions.yaml",
    }


def _undescribed(schema: Mapping[str, Any], path: str) -> Iterator[str]:
    for name, prop in schema.get("properties", {}).items():
        where = f"{path}.{name}"
        if not prop.get("description", "").strip() and where not in (".metadata",):
            yield where
        yield from _undescribed(prop, where)
    for nested in ("items", "additionalProperties"):
        if isinstance(schema.get(nested), Mapping):
            yield from _undescribed(schema[nested], f"{path}[]" if nested == "items" else f"{path}{{}}")


def test_every_field_has_a_description() -> None:
    for crd in crd_documents():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert schema["description"].strip()
        assert list(_undescribed(schema, "")) == [], crd["metadata"]["name"]


# --------------------------------------------------------------------------- against the API server


def test_every_crd_is_established_with_its_names(crds: KubeCluster) -> None:
    short = {
        "putplaceinstances.putplace.io": ["ppi"],
        "apikeys.putplace.io": ["ppkey"],
        "webhooksubscriptions.putplace.io": ["pphook"],
    }
    for name in CRD_NAMES:
        crd = crds.get("crd", name)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", conditions
        assert conditions.get("NamesAccepted") == "True", conditions
        assert "NonStructuralSchema" not in conditions
        accepted = crd["status"]["acceptedNames"]
        assert accepted["shortNames"] == short[name]
        assert accepted["categories"] == ["putplace"]


def test_examples_apply(crds: KubeCluster, namespace: str) -> None:
    crds.kubectl("apply", f"--namespace={namespace}", "-f", str(EXAMPLES))
    minimal = crds.get("ppi", "putplace", f"--namespace={namespace}")
    assert minimal["spec"] == EMPTY_SPEC_DEFAULTS

    prod = crds.get("ppi", "putplace-prod", f"--namespace={namespace}")["spec"]
    assert prod["replicas"] == 3
    # The given backends are kept and the defaulted ones are not added next to them.
    assert prod["database"] == {"mongodb": {"uriSecretRef": {"name": "putplace-mongodb", "key": "uri"}}}
    assert set(prod["storage"]) == {"s3"}
    assert prod["storage"]["s3"]["credentialsSecretRef"] == {
        "name": "putplace-s3",
        "accessKeyIdKey": "accessKeyId",
        "secretAccessKeyKey": "secretAccessKey",
    }
    assert prod["storage"]["s3"]["addressingStyle"] == "path"
    assert prod["agent"]["tolerations"][0]["operator"] == "Exists"

    key = crds.get("ppkey", "ci-uploader", f"--namespace={namespace}")["spec"]
    assert key["instanceRef"] == {"name": "putplace"}
    assert key["scopes"] == ["read", "write"]
    assert key["rotation"] == 0  # defaulted
    assert key["secretName"] == "ci-uploader-key"

    hook = crds.get("pphook", "audit-hook", f"--namespace={namespace}")["spec"]
    assert hook["instanceRef"] == {"name": "putplace"}
    assert hook["events"] == ["file.deleted", "upload.mismatch"]


@pytest.mark.parametrize("spec", [{}, None], ids=["empty-spec", "no-spec"])
def test_defaults_make_an_empty_instance_useful(crds: KubeCluster, namespace: str, spec: dict[str, Any] | None) -> None:
    created = create(crds, namespace, instance("pp", spec))
    assert created.returncode == 0, created.stderr
    assert crds.get("ppi", "pp", f"--namespace={namespace}")["spec"] == EMPTY_SPEC_DEFAULTS


def test_defaults_fill_in_given_sections(crds: KubeCluster, namespace: str) -> None:
    spec = {
        "replicas": 2,
        **MONGO_S3,
        "agent": {"enabled": False},
        "image": {"tag": "1.2.3"},
    }
    created = create(crds, namespace, instance("pp", spec))
    assert created.returncode == 0, created.stderr
    got = crds.get("ppi", "pp", f"--namespace={namespace}")["spec"]
    assert got["image"] == {"repository": "ghcr.io/putplace/putplace-api", "tag": "1.2.3", "pullPolicy": "IfNotPresent"}
    assert got["database"] == {"mongodb": {"uriSecretRef": {"name": "mongo", "key": "uri"}}}
    assert got["storage"] == {"s3": {"bucket": "contents", "addressingStyle": "path"}}
    assert got["agent"]["enabled"] is False
    assert got["agent"]["hostPaths"] == ["/var/log"]


def test_valid_edge_cases_are_accepted(crds: KubeCluster, namespace: str) -> None:
    future_toleration = {"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute", "futureField": 1}
    spec = {
        "replicas": 100,
        **MONGO_S3,
        "resources": {"requests": {"cpu": "100m", "memory": 134217728}, "limits": {"nvidia.com/gpu": 1}},
        "rateLimit": {"requestsPerSecond": 0.5},
        "allowedMimeTypes": ["image/*", "application/vnd.ms-excel", "image/svg+xml"],
        "agent": {
            "hostPaths": ["/", "/var/log/", "/home/.config"],
            "rescanIntervalSeconds": 0,
            "tolerations": [future_toleration],
        },
    }
    created = create(crds, namespace, instance("pp", spec))
    assert created.returncode == 0, created.stderr
    got = crds.get("ppi", "pp", f"--namespace={namespace}")["spec"]
    assert got["agent"]["tolerations"] == [future_toleration]  # unknown toleration fields are kept
    assert got["resources"]["requests"]["memory"] == 134217728
    key = api_key(
        "key",
        {
            **KEY_SPEC,
            "scopes": ["metrics"],
            "expiresAt": "2030-01-01T00:00:00Z",
            "rotation": 7,
            "hostnames": ["node-a", "x" * 255],
            "pathPrefixes": ["/", "/var/log/"],
            "quota": {"maxBytes": 2**63 - 1, "maxFiles": 1},
        },
    )
    created = create(crds, namespace, key)
    assert created.returncode == 0, created.stderr


SQLITE_ONE_REPLICA = "spec.replicas: Invalid value: database.sqlite keeps the catalogue in one file"
LOCAL_ONE_REPLICA = "spec.replicas: Invalid value: storage.local keeps contents on a ReadWriteOnce volume"

INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("sqlite-3-replicas", instance(spec={"replicas": 3}), [SQLITE_ONE_REPLICA, "needs replicas: 1"]),
    (
        "sqlite-3-replicas-with-s3",
        instance(spec={"replicas": 3, "storage": {"s3": {"bucket": "contents"}}}),
        [SQLITE_ONE_REPLICA],
    ),
    (
        "local-storage-3-replicas",
        instance(spec={"replicas": 3, "database": MONGO_S3["database"]}),
        [LOCAL_ONE_REPLICA, "use storage.s3 to run more replicas"],
    ),
    (
        "bad-pull-policy",
        instance(spec={"image": {"pullPolicy": "Sometimes"}}),
        ['spec.image.pullPolicy: Unsupported value: "Sometimes"', '"Always", "IfNotPresent", "Never"'],
    ),
    ("replicas-0", instance(spec={"replicas": 0}), ["spec.replicas in body should be greater than or equal to 1"]),
    (
        "mongodb-and-sqlite",
        instance(spec={"database": {"sqlite": {}, "mongodb": {"uriSecretRef": {"name": "mongo"}}}}),
        ["spec.database: Invalid value: exactly one of database.mongodb or database.sqlite must be set"],
    ),
    (
        "no-database",
        instance(spec={"database": {}}),
        ["exactly one of database.mongodb or database.sqlite must be set"],
    ),
    (
        "s3-and-local",
        instance(spec={"storage": {"local": {}, "s3": {"bucket": "contents"}}}),
        ["spec.storage: Invalid value: exactly one of storage.s3 or storage.local must be set"],
    ),
    (
        "mongodb-without-secret",
        instance(spec={"database": {"mongodb": {}}}),
        ["spec.database.mongodb.uriSecretRef: Required value"],
    ),
    (
        "relative-and-dotdot-host-paths",
        instance(spec={"agent": {"hostPaths": ["var/log", "/var/../etc"]}}),
        ["spec.agent.hostPaths[0]", "should match '^/'", "hostPaths must be absolute paths without . or .. components"],
    ),
    ("no-host-paths", instance(spec={"agent": {"hostPaths": []}}), ["spec.agent.hostPaths", "at least 1 items"]),
    (
        "bad-mime-type",
        instance(spec={"allowedMimeTypes": ["image/*", "text"]}),
        ['spec.allowedMimeTypes[1]: Invalid value: "text"'],
    ),
    (
        "bad-quantity",
        instance(spec={"resources": {"limits": {"cpu": "lots"}}}),
        ['spec.resources.limits.cpu: Invalid value: "lots"'],
    ),
    (
        "zero-rate",
        instance(spec={"rateLimit": {"requestsPerSecond": 0, "burst": 0}}),
        ["spec.rateLimit.requestsPerSecond in body should be greater than 0", "spec.rateLimit.burst"],
    ),
    (
        "dotted-instance-name",
        instance(name="pp.prod", spec={}),
        ['metadata.name: Invalid value: "pp.prod"'],
    ),
    ("long-instance-name", instance(name="p" * 41, spec={}), ["metadata.name: Too long: may not be more than 40"]),
    ("key-without-instance-ref", api_key(spec={"scopes": ["read"]}), ["spec.instanceRef: Required value"]),
    ("key-without-spec", api_key(), ["spec: Required value"]),
    (
        "key-bad-scope",
        api_key(spec={**KEY_SPEC, "scopes": ["read", "delete"]}),
        ['spec.scopes[1]: Unsupported value: "delete"', '"read", "write", "admin", "metrics"'],
    ),
    ("key-no-scopes", api_key(spec={**KEY_SPEC, "scopes": []}), ["spec.scopes", "at least 1 items"]),
    (
        "key-duplicate-scope",
        api_key(spec={**KEY_SPEC, "scopes": ["read", "read"]}),
        ['spec.scopes[1]: Duplicate value: "read"'],
    ),
    (
        "key-negative-rotation",
        api_key(spec={**KEY_SPEC, "rotation": -1}),
        ["spec.rotation: Invalid value: -1: spec.rotation in body should be greater than or equal to 0"],
    ),
    (
        "key-bad-expiry",
        api_key(spec={**KEY_SPEC, "expiresAt": "tomorrow"}),
        ['spec.expiresAt: Invalid value: "tomorrow"', "date-time"],
    ),
    (
        "key-bad-limits",
        api_key(spec={**KEY_SPEC, "hostnames": [], "pathPrefixes": ["var/log", "/a", "/a"]}),
        [
            "spec.hostnames: Invalid value: 0: spec.hostnames in body should have at least 1 items",
            "spec.pathPrefixes[0]",
            "should match '^/'",
            'spec.pathPrefixes[2]: Duplicate value: "/a"',
        ],
    ),
    (
        "key-bad-quota",
        api_key(spec={**KEY_SPEC, "hostnames": [""], "quota": {"maxBytes": 0, "maxFiles": "many"}}),
        [
            "spec.hostnames[0]",
            "at least 1 chars long",
            "spec.quota.maxBytes: Invalid value: 0: spec.quota.maxBytes in body should be greater than or equal to 1",
            'spec.quota.maxFiles: Invalid value: "string": spec.quota.maxFiles in body must be of type integer',
        ],
    ),
    ("key-empty-quota", api_key(spec={**KEY_SPEC, "quota": {}}), ["spec.quota", "at least 1 properties"]),
    (
        "key-bad-secret-name",
        api_key(spec={**KEY_SPEC, "secretName": "Not_A_Name"}),
        ['spec.secretName: Invalid value: "Not_A_Name"'],
    ),
    ("hook-without-url", webhook({"instanceRef": {"name": "pp"}}), ["spec.url: Required value"]),
    ("hook-ftp-url", webhook({**HOOK_SPEC, "url": "ftp://example.com/x"}), ["spec.url in body should match"]),
    (
        "hook-unknown-event",
        webhook({**HOOK_SPEC, "events": ["file.deleted", "file.exploded"]}),
        ['spec.events[1]: Unsupported value: "file.exploded"'],
    ),
]


@pytest.mark.parametrize(("obj", "messages"), [pytest.param(o, m, id=i) for i, o, m in INVALID])
def test_invalid_objects_are_rejected_with_a_readable_message(
    crds: KubeCluster, namespace: str, obj: dict[str, Any], messages: list[str]
) -> None:
    rejected = create(crds, namespace, obj)
    assert rejected.returncode != 0, f"accepted: {json.dumps(obj)}"
    assert f'The {obj["kind"]} "{obj["metadata"]["name"]}" is invalid' in rejected.stderr
    for message in messages:
        assert message in rejected.stderr


def test_backends_instance_ref_and_rotation_cannot_change_the_wrong_way(crds: KubeCluster, namespace: str) -> None:
    assert create(crds, namespace, instance("pp", {})).returncode == 0
    assert create(crds, namespace, api_key("key", KEY_SPEC)).returncode == 0
    to_mongodb = {"spec": {"database": {"sqlite": None, "mongodb": {"uriSecretRef": {"name": "mongo"}}}}}
    refused = patch(crds, namespace, "ppi/pp", to_mongodb)
    assert refused.returncode != 0
    assert "spec.database: Invalid value: the database backend cannot be switched" in refused.stderr
    refused = patch(crds, namespace, "ppi/pp", {"spec": {"storage": {"local": None, "s3": {"bucket": "contents"}}}})
    assert refused.returncode != 0
    assert "spec.storage: Invalid value: the storage backend cannot be switched" in refused.stderr
    refused = patch(crds, namespace, "ppi/pp", {"spec": {"replicas": 2}})
    assert refused.returncode != 0
    assert SQLITE_ONE_REPLICA in refused.stderr
    # Changes within a backend are fine.
    allowed = patch(crds, namespace, "ppi/pp", {"spec": {"database": {"sqlite": {"storageSize": "5Gi"}}}})
    assert allowed.returncode == 0, allowed.stderr

    assert patch(crds, namespace, "ppkey/key", {"spec": {"rotation": 2}}).returncode == 0
    refused = patch(crds, namespace, "ppkey/key", {"spec": {"rotation": 1}})
    assert refused.returncode != 0
    assert "spec.rotation: Invalid value: 1: rotation can only increase" in refused.stderr
    refused = patch(crds, namespace, "ppkey/key", {"spec": {"instanceRef": {"name": "other"}}})
    assert refused.returncode != 0
    assert "spec.instanceRef: Invalid value: instanceRef is immutable" in refused.stderr
    assert crds.get("ppkey", "key", f"--namespace={namespace}")["spec"]["rotation"] == 2


INSTANCE_STATUS = {
    "observedGeneration": 1,
    "endpoint": "http://pp.example.svc:8000",
    "readyReplicas": 1,
    "agentsReady": 2,
    "agentsDesired": 2,
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "AllReady",
            "message": "API and agents are ready",
            "lastTransitionTime": "2025-01-02T03:04:05Z",
            "observedGeneration": 1,
        },
        {"type": "Progressing", "status": "False", "reason": "RolledOut"},
        {"type": "Degraded", "status": "False"},
    ],
    "kopf": {"progress": {"create_instance": {"started": "2025-01-02T03:04:05.123456", "retries": 0}}},
}
KEY_STATUS = {
    "observedGeneration": 1,
    "keyId": "01JH0000000000000000000000",
    "secretName": "key",
    "rotation": 1,
    "previousKeyId": "01JG0000000000000000000000",
    "revokeAfter": "2025-01-03T00:00:00Z",
    "conditions": [{"type": "Ready", "status": "True", "reason": "KeyCreated", "message": "in Secret key"}],
    "kopf": {"dummy": "2025-01-02T03:04:05"},
}


@pytest.mark.parametrize(
    ("obj", "status"),
    [
        pytest.param(instance("pp", {}), INSTANCE_STATUS, id="PutPlaceInstance"),
        pytest.param(api_key("key", KEY_SPEC), KEY_STATUS, id="ApiKey"),
    ],
)
def test_status_subresource_keeps_what_the_operator_writes(
    crds: KubeCluster, namespace: str, obj: dict[str, Any], status: dict[str, Any]
) -> None:
    resource = f"{obj['kind'].lower()}.{GROUP}/{obj['metadata']['name']}"
    # Status sent to the main resource is ignored (that is what the status subresource means).
    created = create(crds, namespace, {**obj, "status": status})
    assert created.returncode == 0, created.stderr
    before = crds.get(resource, f"--namespace={namespace}")
    assert "status" not in before

    written = patch(crds, namespace, resource, {"status": {**status, "notInSchema": 1}}, "--subresource=status")
    assert written.returncode == 0, written.stderr
    assert 'unknown field "status.notInSchema"' in written.stderr  # the API server warns, then prunes
    after = crds.get(resource, f"--namespace={namespace}")
    assert after["status"] == status  # nothing pruned but the unknown field
    assert after["metadata"]["generation"] == before["metadata"]["generation"]

    bad = {"status": {"conditions": [{"type": "Ready", "status": "Yes"}]}}
    rejected = patch(crds, namespace, resource, bad, "--subresource=status")
    assert rejected.returncode != 0
    assert 'status.conditions[0].status: Unsupported value: "Yes"' in rejected.stderr


def test_printer_columns(crds: KubeCluster, namespace: str) -> None:
    ns = f"--namespace={namespace}"
    assert create(crds, namespace, instance("pp", {})).returncode == 0
    assert create(crds, namespace, api_key("key", KEY_SPEC)).returncode == 0

    assert table(crds, "ppi", ns)[0] == ["NAME", "READY", "ENDPOINT", "REPLICAS", "AGENTS", "AGE"]
    assert table(crds, "ppkey", ns)[0] == ["NAME", "INSTANCE", "SCOPES", "KEY ID", "READY", "AGE"]
    wide = table(crds, "ppi", ns, "-o", "wide")[0]
    assert wide[-3:] == ["DESIRED", "AGENTS DESIRED", "REASON"]
    assert table(crds, "ppkey", ns, "-o", "wide")[0][-3:] == ["SECRET", "EXPIRES", "ROTATION"]

    assert patch(crds, namespace, "ppi/pp", {"status": INSTANCE_STATUS}, "--subresource=status").returncode == 0
    assert patch(crds, namespace, "ppkey/key", {"status": KEY_STATUS}, "--subresource=status").returncode == 0
    row = table(crds, "ppi", ns)[1]
    assert row[:5] == ["pp", "True", "http://pp.example.svc:8000", "1", "2"]
    row = table(crds, "ppkey", ns)[1]
    assert row[:5] == ["key", "pp", '["read","write"]', "01JH0000000000000000000000", "True"]


def test_short_names_and_category(crds: KubeCluster, namespace: str) -> None:
    ns = f"--namespace={namespace}"
    assert create(crds, namespace, instance("pp", {})).returncode == 0
    assert create(crds, namespace, api_key("key", KEY_SPEC)).returncode == 0
    assert crds.kubectl("get", "ppi", ns, "-o", "name").stdout.split() == ["putplaceinstance.putplace.io/pp"]
    assert crds.kubectl("get", "ppkey", ns, "-o", "name").stdout.split() == ["apikey.putplace.io/key"]
    everything = crds.kubectl("get", "putplace", ns, "-o", "name").stdout.split()
    assert sorted(everything) == ["apikey.putplace.io/key", "putplaceinstance.putplace.io/pp"]


def test_explain_shows_descriptions(crds: KubeCluster) -> None:
    def explain(field: str) -> str | None:
        # The OpenAPI document that kubectl explain reads is published a moment after Established.
        result = crds.kubectl("explain", field, check=False)
        return result.stdout if result.returncode == 0 else None

    database = wait_until(lambda: explain("ppi.spec.database"), what="kubectl explain ppi.spec.database")
    text = " ".join(database.split())  # explain wraps lines
    assert "FIELD: database <Object>" in text
    assert "Where the catalogue (file records, API keys) lives: exactly one of mongodb or sqlite" in text
    assert "mongodb <Object> A MongoDB" in text
    assert "sqlite <Object> An embedded SQLite file" in text

    replicas = " ".join((explain("ppi.spec.replicas") or "").split())
    assert "More than 1 needs database.mongodb and storage.s3" in replicas
    scopes = " ".join((explain("ppkey.spec.scopes") or "").split())
    assert "What the key may do: read" in scopes
    status = " ".join((explain("ppkey.status") or "").split())
    assert "revokeAfter <string>" in status
