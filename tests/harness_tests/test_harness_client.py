"""The official ``kubernetes`` client against the emulated API server."""

from __future__ import annotations

import json
import threading
from typing import Any

import kubernetes
import pytest
from harness_crd import study, study_crd
from kubernetes.client import ApiException

from harness import Cluster

GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "tuningstudies"


@pytest.fixture
def custom(cluster: Cluster) -> Any:
    cluster.api.register_crd(study_crd())
    return kubernetes.client.CustomObjectsApi(cluster.client())


def test_discovery_lists_resources_verbs_and_subresources(cluster: Cluster) -> None:
    cluster.api.register_crd(study_crd())
    client = cluster.client()
    groups = kubernetes.client.ApisApi(client).get_api_versions()
    assert "kubetune.io" in {g.name for g in groups.groups}
    resources = kubernetes.client.CustomObjectsApi(client).get_api_resources(GROUP, VERSION)
    by_name = {r.name: r for r in resources.resources}
    assert by_name["tuningstudies"].namespaced is True
    assert by_name["tuningstudies"].short_names == ["ts"]
    assert by_name["tuningstudies/status"].verbs == ["get", "patch", "update"]
    core = kubernetes.client.CoreV1Api(client).get_api_resources()
    assert core.group_version == "v1"
    assert {"pods", "pods/log", "events", "namespaces"} <= {r.name for r in core.resources}


def test_create_get_list_with_selectors_and_errors(cluster: Cluster, custom: Any) -> None:
    cluster.api.ensure_namespace("other")
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, study("a"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert created["spec"]["parallelism"] == 1  # schema default applied
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        "other",
        PLURAL,
        {**study("b"), "metadata": {"name": "b", "labels": {"app": "x"}}},
    )
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, study("a"))
    assert exc.value.status == 409 and json.loads(exc.value.body or "")["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as exc:
        custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "missing")
    body = json.loads(exc.value.body or "")
    assert (exc.value.status, body["kind"], body["reason"]) == (404, "Status", "NotFound")

    everywhere = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert (
        everywhere["kind"] == "TuningStudyList"
        and everywhere["apiVersion"] == "kubetune.io/v1alpha1"
    )
    assert sorted(i["metadata"]["name"] for i in everywhere["items"]) == ["a", "b"]
    assert int(everywhere["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])
    assert [
        i["metadata"]["name"]
        for i in custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, label_selector="app in (x,y)"
        )["items"]
    ] == ["b"]
    assert [
        i["metadata"]["name"]
        for i in custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector="app!=x")[
            "items"
        ]
    ] == ["a"]
    assert [
        i["metadata"]["name"]
        for i in custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, field_selector="metadata.namespace=other"
        )["items"]
    ] == ["b"]


def test_schema_validation_rejects_bad_specs_with_field_path(cluster: Cluster, custom: Any) -> None:
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, study("bad", max_trials=0)
        )
    body = json.loads(exc.value.body or "")
    assert exc.value.status == 422 and body["reason"] == "Invalid"
    assert "spec.maxTrials" in body["message"]


def test_status_subresource_and_generation(cluster: Cluster, custom: Any) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, study("s"))
    # A status write through the main resource is ignored; through /status it lands.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "s", {"status": {"phase": "X"}}
    )
    assert "status" not in custom.get_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "s"
    )
    after = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "s",
        {"spec": {"maxTrials": 50}, "status": {"phase": "Running", "undeclared": 1}},
    )
    assert after["status"] == {"phase": "Running"}  # undeclared field pruned, like a real server
    assert after["spec"]["maxTrials"] == 3  # spec changes via /status are ignored
    assert after["metadata"]["generation"] == 1  # status never bumps the generation
    bumped = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "s", {"spec": {"maxTrials": 5}}
    )
    assert bumped["metadata"]["generation"] == 2
    labelled = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "s", {"metadata": {"labels": {"x": "y"}}}
    )
    assert labelled["metadata"]["generation"] == 2


def test_stale_resource_version_conflicts(cluster: Cluster, custom: Any) -> None:
    first = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, study("c"))
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "c", {"spec": {"maxTrials": 4}}
    )
    stale = {**first, "spec": {"maxTrials": 7}}
    with pytest.raises(ApiException) as exc:
        custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "c", stale)
    assert exc.value.status == 409 and json.loads(exc.value.body or "")["reason"] == "Conflict"
    fresh = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "c")
    replaced = custom.replace_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "c", {**fresh, "spec": {"maxTrials": 7}}
    )
    assert replaced["spec"]["maxTrials"] == 7
    patched = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "c",
        [{"op": "replace", "path": "/spec/maxTrials", "value": 8}],
        _content_type="application/json-patch+json",
    )
    assert patched["spec"]["maxTrials"] == 8


def test_watch_replays_only_events_after_the_given_version(cluster: Cluster, custom: Any) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, study("before"))
    since = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"][
        "resourceVersion"
    ]
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, study("after"))
    seen: list[tuple[str, str]] = []

    def watch() -> None:
        stream = kubernetes.watch.Watch().stream(  # type: ignore[no-untyped-call]
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "default",
            PLURAL,
            resource_version=since,
            timeout_seconds=1,
        )
        seen.extend((e["type"], e["object"]["metadata"]["name"]) for e in stream)

    thread = threading.Thread(target=watch)
    thread.start()
    cluster.api.wait_for(lambda: cluster.api.requests_for(PLURAL, "watch"))
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "before")
    thread.join(10)
    assert seen == [("ADDED", "after"), ("DELETED", "before")]


def test_garbage_collection_follows_owner_references(cluster: Cluster, custom: Any) -> None:
    api = cluster.api
    owner = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, study("gc"))
    ref = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TuningStudy",
        "name": "gc",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for name in ("cm-1", "cm-2"):
        api.create("configmaps", {"metadata": {"name": name, "ownerReferences": [ref]}}, "default")
    custom.delete_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "gc", propagation_policy="Background"
    )
    assert api.list("configmaps", "default") == []
    # An object created for an owner that no longer exists is collected at once.
    api.create("configmaps", {"metadata": {"name": "late", "ownerReferences": [ref]}}, "default")
    assert api.find("configmaps", "late", "default") is None


def test_finalizers_hold_deletion_until_removed(cluster: Cluster, custom: Any) -> None:
    body = study("fin")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "fin")
    held = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "fin")
    assert held["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "fin", {"metadata": {"finalizers": None}}
    )
    assert cluster.api.find(PLURAL, "fin", "default") is None


def test_faults_answer_429_then_recover_and_requests_are_logged(
    cluster: Cluster, custom: Any
) -> None:
    # urllib3 (under the client) honours Retry-After on 429 and retries by itself.
    cluster.api.faults.add(
        status=429, retry_after=0, path="/tuningstudies", verbs=("list",), times=1
    )
    assert custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"] == []
    cluster.api.faults.add(status=500, path="/tuningstudies", verbs=("list",), times=1)
    with pytest.raises(ApiException) as exc:
        custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert exc.value.status == 500 and json.loads(exc.value.body or "")["kind"] == "Status"
    assert custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"] == []
    lists = cluster.api.requests_for(PLURAL, "list")
    assert [r.status for r in lists] == [429, 200, 500, 200]
    assert lists[0].group == GROUP and lists[0].namespace is None
