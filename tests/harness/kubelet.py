"""A kubelet stand-in for the real control plane: one Node, pods run as local processes.

It does only what a kubelet does: registers a Node (CPU, memory, pods, ``nvidia.com/gpu``) and
keeps its Lease and ``Ready`` condition fresh; runs the first container of every pod the real
scheduler binds to it (``command``/``args`` with ``$(VAR)`` expansion, the pod's ``env`` and
``envFrom`` resolved as the kubelet would); writes pod status (``Running``, then ``Succeeded``/
``Failed`` with the exit code and the termination message read from the file that stands for
``terminationMessagePath``, or the log tail under ``FallbackToLogsOnError``); stops the process
when the pod is deleted or evicted and then confirms the deletion; serves container logs on the
node's kubelet port (HTTPS, certificate from the cluster CA), so ``kubectl logs`` and the
operator's log reads go through the real apiserver. Jobs, retries, ``podFailurePolicy``,
deadlines, garbage collection and scheduling are the real controllers' work.

A trial process gets only what the pod spec gives it, plus ``PATH``, ``HOME`` and
``KUBETUNE_TERMINATION_LOG`` (where a container would find ``/dev/termination-log``). ``python``
as ``argv[0]`` is this interpreter (the pod's image would have its own).

``runtime = "podman"`` runs the first container from its ``image`` instead (``--pull=never``:
an image absent from the local store is ``ErrImagePull``; ``image_aliases`` maps a pod's image
name to a local one, as a registry mirror would): ``command`` becomes the ``--entrypoint``,
``args`` follow the image (image defaults where absent), the resolved env goes in through an
env-file (0600, deleted when the container ends), host network, read-only root with a tmpfs
``/tmp``, all capabilities dropped, no new privileges, and the termination message file mounted
at ``terminationMessagePath``. Deletion, eviction and ``oom()`` are ``podman kill`` (TERM, then
KILL after the grace period; the trainer as PID 1 ignores TERM, as it would in a pod); the
container is removed when it ends. ``resources.limits`` (cpu, memory) become podman's cgroup
limits; requests, ``securityContext`` and other volumes are not applied.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fnmatch
import http.server
import json
import os
import re
import resource
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .kube import JSON, ApiError, KubeApi

__all__ = ["NODE", "RUNTIMES", "InstantResult", "Kubelet"]

NODE = "kubetune-test-node"
MESSAGE_LIMIT = 4096
#: What ``instant`` callbacks return: a termination message, or (exit code, message).
InstantResult = str | tuple[int, str]
#: ``Kubelet.runtime``: pods as local processes, or as containers from their image.
RUNTIMES = ("process", "podman")
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: unknown names stay as written, ``$$`` is ``$``."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(repl, text)


@dataclasses.dataclass
class _Run:
    pod: JSON
    proc: subprocess.Popen[bytes] | None
    log: Path
    termination_log: Path
    started: str
    killed: str = ""  # "deleted", "oom"
    container: str = ""  # the podman container's name (podman runtime)


class Kubelet:
    """Plays the kubelet of one Node; ``start()`` registers it, ``stop()`` kills what runs."""

    def __init__(
        self,
        api: KubeApi,
        workdir: Path,
        pki: Path,
        *,
        gpus: int = 8,
        cpu: str = "64",
        memory: str = "256Gi",
        pods: int = 1000,
    ) -> None:
        self.api = api
        self.workdir = workdir
        self.pki = pki
        self.capacity = {
            "cpu": cpu,
            "memory": memory,
            "pods": str(pods),
            "nvidia.com/gpu": str(gpus),
        }
        self._gpus = gpus
        self.instant: Callable[[JSON], InstantResult] | None = None
        self.entrypoints: dict[str, list[str]] = {}
        #: "process" (the first container's command as a local process) or "podman".
        self.runtime = "process"
        #: podman runtime: a pod's image name -> the image in the local store.
        self.image_aliases: dict[str, str] = {}
        self.errors: list[BaseException] = []
        self._runs: dict[str, _Run] = {}
        self._done: set[str] = set()
        self._pull_errors: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="kubelet")
        self._threads: list[threading.Thread] = []
        self._server: http.server.ThreadingHTTPServer | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Kubelet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        port = self._serve_logs()
        self._register_node(port)
        for target, name in ((self._heartbeat, "heartbeat"), (self._watch_pods, "pods")):
            thread = threading.Thread(target=target, daemon=True, name=f"kubelet-{name}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            _kill(run)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._server is not None:
            self._server.shutdown()

    def reset(self) -> None:
        """Between tests: forget per-test behaviour (instant mode, entrypoints, pull errors,
        runtime)."""
        self.instant = None
        self.entrypoints = {}
        self.runtime = "process"
        self.image_aliases = {}
        self._pull_errors.clear()
        self.errors.clear()
        if self.capacity["nvidia.com/gpu"] != str(self._gpus):
            self.set_gpus(self._gpus)

    # ---- the Node ------------------------------------------------------------------------------

    def _register_node(self, port: int) -> None:
        body = {
            "metadata": {
                "name": NODE,
                "labels": {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"},
            },
        }
        with contextlib.suppress(ApiError):
            self.api.create("nodes", body)
        self._port = port
        self._write_node_status()

    def _node_status(self) -> JSON:
        stamp = now()
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet stand-in is posting ready status",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [ready],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": NODE},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self._port}},
            "nodeInfo": {
                "kubeletVersion": "v1.32.0",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "process://1",
                "kernelVersion": "",
                "osImage": "kubetune test node",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    def _write_node_status(self) -> None:
        self.api.patch("nodes", NODE, {"status": self._node_status()}, subresource="status")

    def set_gpus(self, count: int) -> None:
        """Change the node's ``nvidia.com/gpu`` capacity (the scheduler re-evaluates pods)."""
        self.capacity = {**self.capacity, "nvidia.com/gpu": str(count)}
        with contextlib.suppress(ApiError, AttributeError):
            self._write_node_status()

    def _heartbeat(self) -> None:
        lease = {
            "metadata": {"name": NODE, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40},
        }
        while not self._stop.is_set():
            try:
                stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                if self.api.find("leases", NODE, "kube-node-lease") is None:
                    self.api.create("leases", lease, "kube-node-lease")
                self.api.patch("leases", NODE, {"spec": {"renewTime": stamp}}, "kube-node-lease")
                self._write_node_status()
            except Exception as exc:  # the test sees it in .errors
                if not self._stop.is_set():
                    self.errors.append(exc)
            self._stop.wait(8)

    # ---- pods ----------------------------------------------------------------------------------

    def _watch_pods(self) -> None:
        for kind, pod in self.api.watch(
            "pods", field_selector=f"spec.nodeName={NODE}", stop=self._stop
        ):
            try:
                self._on_pod(kind, pod)
            except Exception as exc:
                self.errors.append(exc)

    def _on_pod(self, kind: str, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            run = self._runs.get(uid)
        if kind == "DELETED":
            if run is not None:
                run.killed = run.killed or "deleted"
                if run.container:  # podman kill takes a while: not on the watch thread
                    self._pool.submit(_kill, run)
                else:
                    _kill(run)
            return
        phase = (pod.get("status") or {}).get("phase")
        if pod["metadata"].get("deletionTimestamp"):
            self._pool.submit(self._terminate, pod, run)
        elif run is None and uid not in self._done and phase not in ("Succeeded", "Failed"):
            with self._lock:
                self._runs[uid] = _Run(pod, None, Path(), Path(), now())
            self._pool.submit(self._guard, self._start, pod)

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            if not self._stop.is_set():
                self.errors.append(exc)

    def _terminate(self, pod: JSON, run: _Run | None) -> None:
        """A pod being deleted: stop its process, report it, then confirm the deletion."""
        if run is not None and run.proc is not None:
            run.killed = run.killed or "deleted"
            grace = pod["metadata"].get("deletionGracePeriodSeconds") or 0
            _kill(run, grace=min(float(grace), 5.0))
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.proc.wait(10)
            self._finish(pod["metadata"]["uid"], run.proc.returncode or -9)
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            self.api.delete(
                "pods",
                meta["name"],
                meta["namespace"],
                grace_seconds=0,
                preconditions={"uid": meta["uid"]},
            )

    def _start(self, pod: JSON) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        log = self.workdir / f"{ns}_{name}_{uid[:8]}.log"
        termination_log = log.with_suffix(".termination-log")
        log.touch()
        termination_log.touch()
        pull_error = self._pull_error(pod)
        if pull_error:
            self._write_waiting(pod, container, "ErrImagePull", pull_error)
            return
        run = _Run(pod, None, log, termination_log, now())
        with self._lock:
            self._runs[uid] = run
        if self.instant is not None:
            result = self.instant(pod)
            code, message = (0, result) if isinstance(result, str) else result
            termination_log.write_text(message)
            self._write_running(pod, container, run.started)
            self._finish(uid, code)
            return
        if self.runtime not in RUNTIMES:
            raise ValueError(f"Kubelet.runtime {self.runtime!r} is not one of {RUNTIMES}")
        if self.runtime == "podman":
            image = self._image(container)
            if not _quiet(["podman", "image", "exists", image]):
                message = f"image {image!r} is not in the local store (pull never)"
                self._write_waiting(pod, container, "ErrImagePull", message)
                return
            run.container = f"k8s_{container.get('name', 'main')}_{name}_{ns}_{uid[:8]}"
        argv, env = self._command(pod, container, run)
        if isinstance(env, str) or not argv:
            reason = (
                "CreateContainerConfigError" if isinstance(env, str) else "CreateContainerError"
            )
            self._write_waiting(
                pod,
                container,
                reason,
                env
                if isinstance(env, str)
                else f"no command known for image {container.get('image')!r}",
            )
            with self._lock:
                self._runs.pop(uid, None)
            return
        self._spawn(pod, container, run, argv, env)

    def _spawn(
        self, pod: JSON, container: JSON, run: _Run, argv: list[str], env: dict[str, str]
    ) -> None:
        proc_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            **env,
            "KUBETUNE_TERMINATION_LOG": str(run.termination_log),
        }
        if run.container:  # podman's own environment; the container's is in the env-file
            proc_env = {k: os.environ.get(k, "") for k in ("PATH", "HOME")}
        cwd = container.get("workingDir")
        if not cwd or not os.path.isdir(cwd):
            cwd = str(self.workdir)
        with run.log.open("ab") as out:
            try:
                run.proc = subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=proc_env,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                run.termination_log.write_text(str(exc))
                self._finish(pod["metadata"]["uid"], 128)
                return
        self._write_running(pod, container, run.started)
        code = run.proc.wait()
        self._finish(pod["metadata"]["uid"], code)
        if run.container:
            _quiet(["podman", "rm", "--force", "--ignore", "--time", "0", run.container])
            run.log.with_suffix(".env").unlink(missing_ok=True)

    def _command(
        self, pod: JSON, container: JSON, run: _Run
    ) -> tuple[list[str], dict[str, str] | str]:
        env = self._container_env(pod, container)
        if run.container and not isinstance(env, str):
            return self._container_argv(container, run, env), env
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if not container.get("command"):
            image = container.get("image", "")
            argv = [*self.entrypoints.get(image, []), *(container.get("args") or [])]
        if isinstance(env, str) or not argv:
            return argv, env
        argv = [expand_vars(a, env) for a in argv]
        if os.path.basename(argv[0]) in ("python", "python3"):
            argv[0] = sys.executable
        return argv, env

    def _image(self, container: JSON) -> str:
        image = str(container.get("image", ""))
        return self.image_aliases.get(image, image)

    def _container_argv(self, container: JSON, run: _Run, env: dict[str, str]) -> list[str]:
        """``podman run`` for the pod's first container, as a CRI runtime would start it."""
        env_file = run.log.with_suffix(".env")
        env_file.touch(mode=0o600)
        # What an env-file line cannot carry (a line break; a name read as a comment) goes inline.
        inline = {k: v for k, v in env.items() if "\n" in v or "\r" in v or k[0] in "# \t"}
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items() if k not in inline))
        run.termination_log.chmod(0o666)  # the image's user is not root
        message_path = container.get("terminationMessagePath") or "/dev/termination-log"
        meta = run.pod["metadata"]
        argv = [
            *podman_run_prefix(),
            *("--name", run.container, "--pull=never", "--network", "host"),
            *("--read-only", "--tmpfs", "/tmp", "--read-only-tmpfs=false"),
            *("--cap-drop=ALL", "--security-opt", "no-new-privileges"),
            *("--label", f"io.kubernetes.pod.namespace={meta['namespace']}"),
            *("--label", f"io.kubernetes.pod.name={meta['name']}"),
            *("--label", f"io.kubernetes.pod.uid={meta['uid']}"),
            *("--env-file", str(env_file)),
            *(a for k, v in inline.items() for a in ("--env", f"{k}={v}")),
            *("--volume", f"{run.termination_log}:{message_path}:rw"),
        ]
        argv += _limit_flags(container)
        if container.get("workingDir"):
            argv += ["--workdir", container["workingDir"]]
        if container.get("command"):
            command = [expand_vars(a, env) for a in container["command"]]
            argv += ["--entrypoint", json.dumps(command)]
        args = [expand_vars(a, env) for a in container.get("args") or []]
        return [*argv, self._image(container), *args]

    def _finish(self, uid: str, code: int) -> None:
        """The process ended: write the pod's terminal status (once)."""
        with self._lock:
            run = self._runs.pop(uid, None)
            if run is None or uid in self._done:
                return
            self._done.add(uid)
        if code < 0:
            code = 128 - code  # killed by signal N -> 128 + N
        container = ((run.pod.get("spec") or {}).get("containers") or [{}])[0]
        message = run.termination_log.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
        policy = container.get("terminationMessagePolicy")
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            lines = run.log.read_bytes().decode(errors="replace").splitlines()[-80:]
            message = "\n".join(lines)[-2048:]
        reason = "Completed" if code == 0 else "Error"
        if run.killed == "oom":
            reason, code = "OOMKilled", 137
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": run.started,
            "finishedAt": now(),
            "containerID": f"process://{uid}",
        }
        if message:
            terminated["message"] = message
        phase = "Succeeded" if code == 0 and not run.killed else "Failed"
        status = {
            "phase": phase,
            "conditions": _conditions(phase),
            "containerStatuses": [
                {
                    **_container_status(run.pod, container),
                    "ready": False,
                    "started": False,
                    "state": {"terminated": terminated},
                }
            ],
        }
        self._write_status(run.pod, status)

    def _write_status(self, pod: JSON, status: JSON) -> None:
        """A strategic merge, as the kubelet's: conditions others set (``DisruptionTarget``)
        stay, matched by type; container statuses match by name."""
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            self.api.patch(
                "pods",
                meta["name"],
                {"status": status},
                meta["namespace"],
                subresource="status",
                patch_type="strategic",
            )

    def _write_running(self, pod: JSON, container: JSON, started: str) -> None:
        status = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": started,
            "conditions": _conditions("Running"),
            "containerStatuses": [
                {
                    **_container_status(pod, container),
                    "ready": True,
                    "started": True,
                    "state": {"running": {"startedAt": started}},
                }
            ],
        }
        self._write_status(pod, status)

    def _write_waiting(self, pod: JSON, container: JSON, reason: str, message: str) -> None:
        status = {
            "phase": "Pending",
            "hostIP": "127.0.0.1",
            "startTime": now(),
            "containerStatuses": [
                {
                    **_container_status(pod, container),
                    "ready": False,
                    "started": False,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ],
        }
        self._write_status(pod, status)

    def _container_env(self, pod: JSON, container: JSON) -> dict[str, str] | str:
        """The container's variables, or a CreateContainerConfigError message."""
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            for kind in ("secret", "configMap"):
                ref = src.get(f"{kind}Ref")
                if not ref:
                    continue
                data = self._source(kind, ref["name"], ns)
                if data is None and not ref.get("optional"):
                    return f'{kind} "{ref["name"]}" not found'
                env.update({src.get("prefix", "") + k: v for k, v in (data or {}).items()})
        for item in container.get("env") or []:
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = expand_vars(str(item.get("value", "")), env)
            elif "fieldRef" in source:
                env[item["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
            else:
                missing = self._env_from_ref(env, item["name"], source, ns)
                if missing:
                    return missing
        return env

    def _env_from_ref(self, env: dict[str, str], name: str, source: JSON, ns: str) -> str:
        for kind, key in (("secret", "secretKeyRef"), ("configMap", "configMapKeyRef")):
            ref = source.get(key)
            if not ref:
                continue
            data = self._source(kind, ref["name"], ns)
            if data is not None and ref["key"] in data:
                env[name] = data[ref["key"]]
            elif not ref.get("optional"):
                return f"couldn't find key {ref['key']} in {kind} {ns}/{ref['name']}"
        return ""

    def _source(self, kind: str, name: str, ns: str) -> dict[str, str] | None:
        obj = self.api.find("secrets" if kind == "secret" else "configmaps", name, ns)
        if obj is None:
            return None
        if kind == "secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    # ---- faults a kubelet produces ---------------------------------------------------------------

    def image_pull_error(self, job: str, namespace: str = "*", message: str = "") -> None:
        """Pods of Jobs matching ``job`` (a glob) fail to pull their image from now on."""
        self._pull_errors[(namespace, job)] = message or "failed to pull image: not found"

    def heal(self) -> None:
        self._pull_errors.clear()

    def _pull_error(self, pod: JSON) -> str:
        meta = pod["metadata"]
        job = (meta.get("labels") or {}).get("job-name", "")
        for (ns, pattern), message in self._pull_errors.items():
            if fnmatch.fnmatch(meta["namespace"], ns) and fnmatch.fnmatch(job, pattern):
                return message
        return ""

    def evict(self, pod: str, namespace: str = "default") -> None:
        """The Eviction API, as ``kubectl drain`` uses it (``DisruptionTarget``, then delete)."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace},
        }
        self.api.request("POST", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", json=body)

    def disrupt(self, pod: str, namespace: str, reason: str, message: str) -> None:
        """What the taint manager or the scheduler does: ``DisruptionTarget``, then delete."""
        cond = {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": now(),
        }
        self.api.patch(
            "pods",
            pod,
            {"status": {"conditions": [cond]}},
            namespace,
            subresource="status",
            patch_type="strategic",
        )
        self.api.delete("pods", pod, namespace)

    def lose_node(self, pod: str, namespace: str = "default") -> None:
        self.disrupt(
            pod,
            namespace,
            "DeletionByTaintManager",
            "Taint manager: deleting due to NoExecute taint",
        )

    def preempt(self, pod: str, namespace: str = "default") -> None:
        self.disrupt(
            pod, namespace, "PreemptionByScheduler", "Preempted in order to admit critical pod"
        )

    def oom(self, pod: str, namespace: str = "default") -> None:
        """The container is killed for memory: exit 137, reason ``OOMKilled``."""
        for run in self._active_runs():
            meta = run.pod["metadata"]
            if meta["name"] == pod and meta["namespace"] == namespace:
                run.killed = "oom"
                _kill(run)

    # ---- queries ---------------------------------------------------------------------------

    def _active_runs(self) -> list[_Run]:
        with self._lock:
            return list(self._runs.values())

    def active_pod(self, job: str, namespace: str = "default") -> str | None:
        """The name of the Job's pod whose process is running here, if any."""
        for run in self._active_runs():
            meta = run.pod["metadata"]
            labels = meta.get("labels") or {}
            mine = meta["namespace"] == namespace and labels.get("job-name") == job
            if mine and run.proc is not None and run.proc.poll() is None:
                return str(meta["name"])
        return None

    def running_processes(self) -> int:
        return sum(1 for r in self._active_runs() if r.proc is not None and r.proc.poll() is None)

    def log_of(self, namespace: str, pod: str) -> str:
        found = sorted(self.workdir.glob(f"{namespace}_{pod}_*.log"))
        return found[-1].read_text(errors="replace") if found else ""

    # ---- the kubelet's HTTPS port (container logs) -----------------------------------------

    def _serve_logs(self) -> int:
        kubelet = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlparse(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) < 3 or parts[0] != "containerLogs":
                    self.send_error(404)
                    return
                text = kubelet.log_of(parts[1], parts[2])
                tail = urllib.parse.parse_qs(url.query).get("tailLines")
                if tail:
                    text = "".join(text.splitlines(keepends=True)[-int(tail[0]) :])
                body = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = _tls_context(self.pki, self.workdir).wrap_socket(
            self._server.socket, server_side=True
        )
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return int(self._server.server_address[1])


def _tls_context(pki: Path, workdir: Path) -> ssl.SSLContext:
    """A serving certificate for 127.0.0.1 signed by the cluster CA (the apiserver checks it)."""
    key, csr, crt, ext = (workdir / f"kubelet.{s}" for s in ("key", "csr", "crt", "ext"))
    if not crt.exists():
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
        run("openssl", "genrsa", "-out", str(key), "2048")
        run("openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={NODE}", "-out", str(csr))
        run(
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(pki / "ca.crt"),
            "-CAkey",
            str(pki / "ca.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            str(ext),
            "-out",
            str(crt),
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(crt), str(key))
    return context


def podman_run_prefix() -> list[str]:
    """``podman run --rm`` with what podman needs here: runc, rlimits no higher than ours."""

    def limit(kind: int) -> int:
        hard = resource.getrlimit(kind)[1]
        return 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)

    nofile, nproc = limit(resource.RLIMIT_NOFILE), limit(resource.RLIMIT_NPROC)
    return [
        *("podman", "run", "--rm", "--runtime", "runc"),
        *("--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"),
    ]


_QUANTITY = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_QUANTITY |= {f"{u}i": 1024.0**n for n, u in enumerate("KMGTPE", 1)}


def _quantity(text: str) -> float:
    """A Kubernetes quantity (``500m``, ``1``, ``1Gi``, ``512M``) as a number."""
    for suffix in sorted(_QUANTITY, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _QUANTITY[suffix]
    return float(text)


def _limit_flags(container: JSON) -> list[str]:
    """``resources.limits`` as the cgroup limits a kubelet sets: a CPU quota, and memory
    without swap (exceeding it kills the container: exit 137, reported as ``Error``)."""
    limits = (container.get("resources") or {}).get("limits") or {}
    flags = []
    if "cpu" in limits:
        flags += ["--cpus", f"{_quantity(str(limits['cpu'])):g}"]
    if "memory" in limits:
        memory = f"{int(_quantity(str(limits['memory'])))}b"
        flags += ["--memory", memory, "--memory-swap", memory]
    return flags


def _quiet(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, check=False, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _kill_container(run: _Run, proc: subprocess.Popen[bytes], grace: float) -> None:
    """``podman kill``: TERM, then KILL after ``grace``; retried while the container is still
    being created (a kill that finds no running container fails), and if ``podman run`` outlives
    all that, its process group goes too."""
    if grace > 0:
        _quiet(["podman", "kill", "--signal", "TERM", run.container])
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        _quiet(["podman", "kill", "--signal", "KILL", run.container])
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _kill(run: _Run, grace: float = 0.0) -> None:
    proc = run.proc
    if proc is None or proc.poll() is not None:
        return
    if run.container:
        _kill_container(run, proc, grace)
        return
    with contextlib.suppress(ProcessLookupError):
        if grace > 0:
            os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _field(pod: JSON, path: str) -> str:
    meta = pod["metadata"]
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": NODE,
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
    }
    for dict_name in ("labels", "annotations"):
        prefix = f"metadata.{dict_name}['"
        if path.startswith(prefix):
            return str((meta.get(dict_name) or {}).get(path[len(prefix) : -2], ""))
    return values.get(path, "")


def _conditions(phase: str) -> list[JSON]:
    ok = "True" if phase == "Running" else "False"
    reason = {"Running": None, "Succeeded": "PodCompleted", "Failed": "PodFailed"}[phase]
    out = []
    for ctype in (
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ):
        status = ok if ctype in ("Ready", "ContainersReady") else "True"
        cond: JSON = {
            "type": ctype,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": now(),
        }
        if status == "False" and reason:
            cond["reason"] = reason
        out.append(cond)
    return out


def _container_status(pod: JSON, container: JSON) -> JSON:
    image = container.get("image", "")
    return {
        "name": container.get("name", "main"),
        "image": image,
        "imageID": f"process://{image}",
        "containerID": f"process://{pod['metadata']['uid']}",
        "restartCount": 0,
    }
