"""The fault proxy in front of the real apiserver: it forwards, records, and injects faults."""

from __future__ import annotations

import kubernetes
import pytest
import urllib3

from harness import Cluster


def core(cluster: Cluster) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(cluster.client())


def test_requests_pass_through_and_are_recorded_with_their_verb(cluster: Cluster) -> None:
    api = core(cluster)
    api.create_namespaced_config_map("default", {"metadata": {"name": "p1"}, "data": {"a": "b"}})
    assert api.read_namespaced_config_map("p1", "default").data == {"a": "b"}
    verbs = {(r.resource, r.verb, r.status) for r in cluster.api.requests_for("configmaps")}
    assert {("configmaps", "create", 201), ("configmaps", "get", 200)} <= verbs
    assert any('"p1"' in body for body in cluster.proxy.bodies)


def test_injected_faults_answer_instead_of_the_server(cluster: Cluster) -> None:
    rule = cluster.api.faults.add(path=r"/configmaps$", verbs=("list",), status=500, times=1)
    api = core(cluster)
    with pytest.raises(kubernetes.client.ApiException) as caught:
        api.list_namespaced_config_map("default")
    assert caught.value.status == 500 and rule.hits == 1
    api.list_namespaced_config_map("default")  # times=1: the next one reaches the server
    # The official client waits out a 429's Retry-After and asks again by itself.
    cluster.api.faults.add(path=r"/configmaps$", status=429, retry_after=1, times=1)
    api.list_namespaced_config_map("default")
    codes = [r.status for r in cluster.api.requests_for("configmaps", "list")]
    assert codes == [500, 200, 429, 200]


def test_watches_can_be_cut_and_expired(cluster: Cluster) -> None:
    api = core(cluster)
    cluster.proxy.gone_watches(1, resource="configmaps")
    watch = kubernetes.watch.Watch()
    with pytest.raises(kubernetes.client.ApiException) as caught:  # the ERROR event, as raised
        for _ in watch.stream(
            api.list_namespaced_config_map, "default", timeout_seconds=2, resource_version="1"
        ):
            pass
    assert caught.value.status == 410
    # resourceVersion "0": served from the watch cache as it is. Without one, the apiserver
    # waits for its configmaps cache to reach etcd's newest revision, which it may not do
    # until a ConfigMap changes (504 "Too large resource version" on a busy 2-core machine).
    fresh = kubernetes.watch.Watch()  # the first one remembers the refused resourceVersion
    events = fresh.stream(
        api.list_namespaced_config_map, "default", timeout_seconds=30, resource_version="0"
    )
    first = next(events)  # the cache's current objects replay as ADDED
    assert first["type"] == "ADDED"
    cluster.api.drop_watches()
    with pytest.raises(urllib3.exceptions.ProtocolError):  # as a connection reset looks
        list(events)
    assert len(cluster.api.requests_for("configmaps", "watch")) >= 2
