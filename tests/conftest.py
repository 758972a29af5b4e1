"""Session-wide fixtures: a real PostgreSQL and a real Kubernetes control plane (with a kubelet
stand-in and a fault proxy).

Import harness pieces as ``from harness import ...`` (``tests/`` is on ``sys.path`` because this
conftest lives there and ``tests/`` has no ``__init__.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from harness.cluster import Cluster
from harness.control_plane import ControlPlane, ControlPlaneUnavailableError
from harness.postgres import PostgresServer, PostgresUnavailableError, start_server

# A loaded CI machine can take longer than Hypothesis's 200 ms default deadline for an example;
# a deadline there is a timed assertion, so none (issue 18).
settings.register_profile("kubetune", deadline=None)
settings.load_profile("kubetune")


def _must_not_skip() -> bool:
    """CI installs PostgreSQL, so a missing server there is a failure, not a skip."""
    return bool(os.environ.get("CI") or os.environ.get("KUBETUNE_REQUIRE_POSTGRES"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The running server, with ``stop()``/``start()``/``restart(mode)`` for fault tests.

    A test that stops the server must start it again before it ends (other tests share it).
    """
    try:
        server = start_server()
    except PostgresUnavailableError as exc:
        if _must_not_skip():
            pytest.fail(f"PostgreSQL is required here: {exc}")
        pytest.skip(f"PostgreSQL is not installed: {exc}")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql+psycopg2://kubetune:<password>@127.0.0.1:<port>/kubetune`` (shared DB)."""
    return postgres_server.url()


@pytest.fixture
def fresh_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A URL to a new, empty database for this test only; dropped afterwards."""
    if not postgres_server.is_running():
        postgres_server.start()  # a previous fault test left it stopped
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        if not postgres_server.is_running():
            postgres_server.start()
        postgres_server.drop_database(name)


@pytest.fixture
def postgres_password() -> str:
    """The role's password, for tests asserting it never appears in logs, status or Events."""
    from harness.postgres import PASSWORD

    return PASSWORD


@pytest.fixture(scope="session")
def cluster_session(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """The real control plane with the CRDs installed, the kubelet stand-in and the proxy."""
    running = Cluster.start(control_plane, tmp_path_factory.mktemp("cluster"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def cluster(cluster_session: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """The session's real cluster, clean for this test, with ``KUBECONFIG`` pointing at it
    through the fault proxy (kopf and ``kubernetes.config.load_kube_config()`` read it).
    """
    cluster_session.reset()
    monkeypatch.setenv("KUBECONFIG", str(cluster_session.kubeconfig))
    # The client computes its default kubeconfig path when first imported; follow the env.
    from kubernetes.config import kube_config

    monkeypatch.setattr(
        kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster_session.kubeconfig)
    )
    yield cluster_session
    print("--- the cluster after the test ---\n" + cluster_session.describe())
    assert not cluster_session.kubelet.errors, cluster_session.kubelet.errors


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The real control plane (kube-apiserver, controller-manager, scheduler v1.32), one per
    session. Skipped with one line saying what to provide where it is absent; under CI
    (``CI=true``) its absence is a failure.
    """
    try:
        plane = ControlPlane.up(tmp_path_factory.mktemp("k8s"))
    except ControlPlaneUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the real control plane is required under CI: {exc}")
        pytest.skip(str(exc))
    try:
        yield plane
    finally:
        plane.down()
