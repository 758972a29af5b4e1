"""Real kopf against the emulated API: it sees a custom resource and patches its status."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness_crd import study, study_crd

from harness import Cluster, OperatorProcess, run_kopf

OPERATOR = Path(__file__).with_name("harness_operator.py")


def test_kopf_handles_create_update_delete_through_status_subresource(cluster: Cluster) -> None:
    api = cluster.api
    api.register_crd(study_crd())
    with run_kopf(OPERATOR) as runner:
        api.create("tuningstudies", study("alpha", max_trials=4), "default")
        done = api.wait_for(
            lambda: (
                (api.get("tuningstudies", "alpha", "default").get("status") or {}).get("phase")
                == "Seen"
            )
        )
        assert done
        obj = api.get("tuningstudies", "alpha", "default")
        assert obj["status"] == {"phase": "Seen", "observedTrials": 4}  # undeclared fields pruned
        assert obj["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]

        api.patch("tuningstudies", "alpha", {"spec": {"maxTrials": 9}}, "default")
        api.wait_for(
            lambda: (
                api.get("tuningstudies", "alpha", "default")["status"].get("observedTrials") == 9
            )
        )
        assert api.get("tuningstudies", "alpha", "default")["metadata"]["generation"] == 2

        api.delete("tuningstudies", "alpha", "default")
        api.wait_for(lambda: api.find("tuningstudies", "alpha", "default") is None)

    assert runner.exit_code == 0
    status_patches = [
        r
        for r in api.requests
        if r.resource == "tuningstudies" and r.subresource == "status" and r.verb == "patch"
    ]
    assert status_patches and all(r.status == 200 for r in status_patches)
    # kopf posted Events about its handlers (core v1 Events, generated names).
    reasons = {e.get("reason") for e in api.list("events", "default")}
    assert "Logging" in reasons
    # The initial listing is not replayed as new events: the create handler ran once.
    assert runner.output.count("Handler 'created' succeeded") == 1


def test_kopf_survives_server_errors_and_dropped_watches(cluster: Cluster) -> None:
    api = cluster.api
    api.register_crd(study_crd())
    with run_kopf(OPERATOR):
        api.create("tuningstudies", study("first"), "default")
        api.wait_for(lambda: api.get("tuningstudies", "first", "default").get("status") or {})
        # Two failing status patches, then the server heals: kopf retries the handler.
        rule = api.faults.add(status=500, path="/tuningstudies/second/status", times=2)
        api.drop_watches()  # kopf must reconnect from the last resourceVersion it saw
        api.create("tuningstudies", study("second", max_trials=2), "default")
        api.wait_for(
            lambda: (
                (api.get("tuningstudies", "second", "default").get("status") or {}).get(
                    "observedTrials"
                )
                == 2
            )
        )
        assert rule.hits == 2
    watches = api.requests_for("tuningstudies", "watch")
    assert len(watches) >= 2  # the dropped stream was reopened


@pytest.mark.slow  # two kopf processes start (~1.5 s each)
def test_operator_process_can_be_killed_and_restarted(cluster: Cluster, tmp_path: Path) -> None:
    api = cluster.api
    api.register_crd(study_crd())
    first = OperatorProcess(OPERATOR, cluster.kubeconfig, log=tmp_path / "op1.log").start()
    try:
        api.create("tuningstudies", study("one"), "default")
        api.wait_for(lambda: api.get("tuningstudies", "one", "default").get("status") or {})
    finally:
        first.kill()
    assert first.proc is not None and first.proc.returncode == -9
    api.create("tuningstudies", study("two"), "default")  # created while no operator runs
    with OperatorProcess(OPERATOR, cluster.kubeconfig, log=tmp_path / "op2.log"):
        api.wait_for(lambda: api.get("tuningstudies", "two", "default").get("status") or {})
    assert "Handler 'created' succeeded" in (tmp_path / "op2.log").read_text()
    # The restarted operator did not re-run the handler of the study it had already handled.
    assert "[default/one] Handler 'created'" not in (tmp_path / "op2.log").read_text()
