"""What the operator asks the real apiserver to send it: trial Jobs and Pods only, listed in pages.

kopf's ``labels=`` filters on the handlers are applied in the client, after every Job and Pod
of the cluster was received, parsed and remembered; the watch settings
(:func:`kubetune.observe.configure_watching`) move the filter to the apiserver. The effect is
on memory (benchmarks/README.md, scale), so beside the state of the world this test checks
the requests themselves: nothing else shows whether the apiserver or the client filtered.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from operator_fixtures import (
    by_state,
    jobs,
    optuna_trials,
    run_operator_thread,
    study_manifest,
    trainer_file,
    wait_state,
)

from harness import Cluster
from kubetune.jobs import LABEL_STUDY
from kubetune.observe import LIST_CHUNK_SIZE

NS = "default"

BYSTANDER = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "bystander", "labels": {"app": "not-a-trial"}},
    "spec": {
        "suspend": True,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox:1", "command": ["true"]}],
            }
        },
    },
}


def test_the_operator_watches_only_trial_jobs_and_pods_and_lists_them_in_pages(
    cluster: Cluster, operator_env_vars: str, tmp_path: Path
) -> None:
    cluster.api.create("jobs", BYSTANDER, NS)
    manifest = study_manifest("watched", trainer_file(tmp_path), max_trials=3, parallelism=2)
    with run_operator_thread() as runner:
        cluster.api.create("tuningstudies", manifest, NS)
        final = wait_state(cluster, "watched", "Succeeded")
    assert runner.exit_code == 0, runner.output[-3000:]

    assert final["trials"]["completed"] == 3
    assert by_state(optuna_trials(operator_env_vars, final)) == {"COMPLETE": 3}
    assert len(jobs(cluster, "watched")) == 3
    bystander = cluster.api.find("jobs", "bystander", NS)
    assert bystander is not None and bystander["spec"]["suspend"] is True
    assert "ownerReferences" not in bystander["metadata"]

    for resource in ("jobs", "pods"):
        lists = cluster.api.requests_for(resource, "list")
        watches = cluster.api.requests_for(resource, "watch")
        assert lists and watches, resource
        for r in lists + watches:
            assert parse_qs(r.query).get("labelSelector") == [LABEL_STUDY], r
        for r in lists:
            assert parse_qs(r.query).get("limit") == [str(LIST_CHUNK_SIZE)], r
    # The studies themselves are watched unfiltered.
    study_lists = cluster.api.requests_for("tuningstudies", "list")
    assert study_lists and all("labelSelector" not in parse_qs(r.query) for r in study_lists)
