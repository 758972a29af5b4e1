"""A fake kubelet and Job controller playing a cluster's part for the emulated API server.

For each Job (not suspended) it creates a Pod the way the Job controller does, runs the first
container's command as a local process, and writes pod and Job status as the real kubelet and
Job controller would (phases, ``containerStatuses[].state.terminated``, conditions ``Complete``
/ ``Failed`` with ``BackoffLimitExceeded`` / ``DeadlineExceeded`` / ``PodFailurePolicy``,
``DisruptionTarget`` on evicted pods). Only Jobs with one completion and parallelism one.

All decisions happen on one worker thread fed by a queue: store listeners, process waiters and
the fault verbs only enqueue work, so no state is shared between threads.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fnmatch
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._k8s import JSON, ApiError, expand_vars, rfc3339
from .apiserver import EmulatedApi

__all__ = ["FakeKubelet", "InstantResult"]

NODE = "emulated-node"
MESSAGE_LIMIT = 4096

# What ``instant`` callbacks return: a termination message, or (exit code, message).
InstantResult = str | tuple[int, str]

DISRUPTIONS = {
    "evict": ("EvictionByEvictionAPI", "Eviction API: evicting"),
    "lost": ("DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint"),
    "preempt": ("PreemptionByScheduler", "Preempted in order to admit critical pod"),
}


def _scheduled_waiting(pod: JSON, now: str, waiting: Callable[[JSON], JSON]) -> JSON:
    """A scheduled pod whose containers wait (being created, or failing to pull)."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return {
        "phase": "Pending",
        "qosClass": "BestEffort",
        "hostIP": "127.0.0.1",
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now}],
        "containerStatuses": [
            {
                "name": c.get("name", "main"),
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"waiting": waiting(c)},
            }
            for c in containers
        ],
    }


@dataclasses.dataclass
class _Running:
    pod: JSON
    proc: subprocess.Popen[bytes] | None
    log: Path
    termination_log: Path
    started: str
    killed: str = ""  # why we killed it: evict, lost, preempt, oom, deadline, deleted


def _controller_uid(pod: Mapping[str, Any]) -> str | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "Job" and ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _condition(kind: str, reason: str, message: str, now: str) -> JSON:
    return {
        "type": kind,
        "status": "True",
        "lastProbeTime": now,
        "lastTransitionTime": now,
        "reason": reason,
        "message": message,
    }


def _finished(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


class FakeKubelet:
    """Runs trial pods as local processes; see the module docstring."""

    def __init__(
        self,
        api: EmulatedApi,
        workdir: Path | None = None,
        instant: Callable[[JSON], InstantResult] | None = None,
        entrypoints: Mapping[str, list[str]] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.api = api
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kubetune-kubelet-"))
        self.instant = instant
        self.entrypoints = dict(entrypoints or {})  # image -> argv when a container has no command
        self.extra_env = dict(extra_env or {})
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._running: dict[str, _Running] = {}  # pod uid -> process
        self._accounted: set[str] = set()  # pod uids already counted in their Job's status
        self._job_started: dict[str, float] = {}  # job uid -> monotonic start
        self._stuck: list[tuple[str, str, str, str]] = []  # (kind, ns pattern, job pattern, msg)
        self._stuck_pods: dict[str, str] = {}  # pod uid -> fault kind
        self._thread: threading.Thread | None = None
        self.errors: list[BaseException] = []
        api.log_provider = self._log
        api.eviction_handler = lambda ns, name: self.evict(name, ns)

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeKubelet:
        self.api.add_listener(self._on_event)
        self._thread = threading.Thread(target=self._work, name="fake-kubelet", daemon=True)
        self._thread.start()
        for job in self.api.list("jobs"):
            self._enqueue_sync(job)
        return self

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(10)
        for run in list(self._running.values()):
            if run.proc is not None and run.proc.poll() is None:
                run.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.proc.wait(5)

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _work(self) -> None:
        while True:
            try:
                task = self._queue.get(timeout=0.05)
            except queue.Empty:
                task = self._check_deadlines
            if task is None:
                return
            try:
                task()
            except ApiError as exc:
                if exc.code != 404:  # objects vanish under us all the time: that is fine
                    self.errors.append(exc)
            except Exception as exc:  # keep the kubelet alive; tests can assert on .errors
                self.errors.append(exc)

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the worker thread and wait for its result."""
        done = threading.Event()
        box: list[Any] = []

        def task() -> None:
            try:
                box.append(("ok", fn()))
            except BaseException as exc:
                box.append(("err", exc))
            finally:
                done.set()

        self._queue.put(task)
        if not done.wait(timeout):
            raise TimeoutError("the fake kubelet did not answer")
        kind, value = box[0]
        if kind == "err":
            raise value
        return value

    # ---- events -----------------------------------------------------------------------------

    def _on_event(self, key: str, kind: str, obj: JSON, old: JSON | None) -> None:
        if key == "jobs.batch" and kind in ("ADDED", "MODIFIED"):
            self._enqueue_sync(obj)
        elif key == "pods" and kind == "DELETED":
            uid = obj["metadata"]["uid"]
            self._queue.put(lambda: self._pod_deleted(uid, obj))

    def _enqueue_sync(self, job: JSON) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        self._queue.put(lambda: self._sync_job(ns, name))

    # ---- the Job controller -----------------------------------------------------------------

    def _now(self) -> str:
        return rfc3339(self.api.clock())

    def _pods_of(self, job: JSON) -> list[JSON]:
        uid = job["metadata"]["uid"]
        return [
            p
            for p in self.api.list(
                "pods", job["metadata"]["namespace"], f"batch.kubernetes.io/controller-uid={uid}"
            )
            if _controller_uid(p) == uid
        ]

    def _sync_job(self, ns: str, name: str) -> None:
        job = self.api.find("jobs", name, ns)
        if job is None or _finished(job) or job["metadata"].get("deletionTimestamp"):
            return
        spec = job.get("spec") or {}
        if spec.get("suspend"):
            return
        uid = job["metadata"]["uid"]
        status = dict(job.get("status") or {})
        if "startTime" not in status:
            status["startTime"] = self._now()
            self._job_started[uid] = time.monotonic()
        self._job_started.setdefault(uid, time.monotonic())
        active = [
            p
            for p in self._pods_of(job)
            if (p.get("status") or {}).get("phase") in (None, "Pending", "Running")
            and not p["metadata"].get("deletionTimestamp")
        ]
        needs_pod = not active and not status.get("succeeded")
        status["active"] = 1 if needs_pod else len(active)
        status.setdefault("ready", 0)
        status.setdefault("terminating", 0)
        status.setdefault("uncountedTerminatedPods", {})
        self._write_job_status(job, status)
        if needs_pod:
            self._create_pod(job)

    def _write_job_status(self, job: JSON, status: JSON) -> None:
        status = {
            k: v
            for k, v in status.items()
            if not (k in ("active", "succeeded", "failed") and not v)
        }
        if status != (job.get("status") or {}):
            self.api.update_status(
                "jobs", job["metadata"]["name"], status, job["metadata"]["namespace"]
            )

    def _create_pod(self, job: JSON) -> None:
        meta = job["metadata"]
        template = (job.get("spec") or {}).get("template") or {}
        tmeta = template.get("metadata") or {}
        labels = {
            **(tmeta.get("labels") or {}),
            "job-name": meta["name"],
            "batch.kubernetes.io/job-name": meta["name"],
            "controller-uid": meta["uid"],
            "batch.kubernetes.io/controller-uid": meta["uid"],
        }
        pod_spec = dict(template.get("spec") or {})
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{meta['name']}-",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": pod_spec,
        }
        fault = self._stuck_fault(meta["namespace"], meta["name"])
        if fault is None or fault[0] != "unschedulable":
            body["spec"] = {**pod_spec, "nodeName": NODE}
        pod = self.api.create("pods", body, meta["namespace"])
        now = self._now()
        if fault is not None:
            self._stuck_pods[pod["metadata"]["uid"]] = fault[0]
            self._set_stuck(pod, fault[0], fault[1], now)
            return
        if self.instant is None:
            pending = _scheduled_waiting(pod, now, lambda c: {"reason": "ContainerCreating"})
            pod = self.api.update_status(
                "pods", pod["metadata"]["name"], pending, meta["namespace"]
            )
        self._start_pod(pod, job)

    def _set_stuck(self, pod: JSON, kind: str, message: str, now: str) -> None:
        if kind == "unschedulable":
            status = {
                "phase": "Pending",
                "qosClass": "BestEffort",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "lastProbeTime": None,
                        "lastTransitionTime": now,
                        "reason": "Unschedulable",
                        "message": message
                        or "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
                    }
                ],
            }
        else:
            status = _scheduled_waiting(
                pod,
                now,
                lambda c: {
                    "reason": "ErrImagePull",
                    "message": message or f'failed to pull image "{c.get("image", "")}": not found',
                },
            )
        self.api.update_status(
            "pods", pod["metadata"]["name"], status, pod["metadata"]["namespace"]
        )

    def _container_env(self, pod: JSON, container: JSON) -> dict[str, str] | str:
        """The container's own variables, or a CreateContainerConfigError message."""
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}

        def from_source(kind: str, name: str, key: str | None) -> dict[str, str] | None:
            obj = self.api.find("secrets" if kind == "secret" else "configmaps", name, ns)
            if obj is None:
                return None
            data = (
                {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
                if kind == "secret"
                else dict(obj.get("data") or {})
            )
            data.update(obj.get("stringData") or {})
            return data if key is None else ({key: data[key]} if key in data else None)

        for src in container.get("envFrom") or []:
            for kind in ("secret", "configMap"):
                ref = src.get(f"{kind}Ref")
                if ref:
                    data = from_source(
                        "secret" if kind == "secret" else "configmap", ref["name"], None
                    )
                    if data is None and not ref.get("optional"):
                        return f'{kind} "{ref["name"]}" not found'
                    env.update({src.get("prefix", "") + k: v for k, v in (data or {}).items()})
        for item in container.get("env") or []:
            name = item["name"]
            source = item.get("valueFrom")
            if source is None:
                env[name] = expand_vars(str(item.get("value", "")), env)
            elif "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                meta = pod["metadata"]
                values = {
                    "metadata.name": meta["name"],
                    "metadata.namespace": ns,
                    "metadata.uid": meta["uid"],
                    "spec.nodeName": NODE,
                    "status.podIP": "127.0.0.1",
                    "status.hostIP": "127.0.0.1",
                    "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
                }
                for dict_name in ("labels", "annotations"):
                    prefix = f"metadata.{dict_name}['"
                    if path.startswith(prefix):
                        values[path] = (meta.get(dict_name) or {}).get(path[len(prefix) : -2], "")
                env[name] = values.get(path, "")
            else:
                for kind, ref_key in (("secret", "secretKeyRef"), ("configmap", "configMapKeyRef")):
                    ref = source.get(ref_key)
                    if ref:
                        data = from_source(kind, ref["name"], ref["key"])
                        if data is None:
                            if not ref.get("optional"):
                                return (
                                    f"couldn't find key {ref['key']} in {kind} {ns}/{ref['name']}"
                                )
                        else:
                            env[name] = data[ref["key"]]
        return env

    def _start_pod(self, pod: JSON, job: JSON | None) -> None:
        ns, name, uid = (
            pod["metadata"]["namespace"],
            pod["metadata"]["name"],
            pod["metadata"]["uid"],
        )
        containers = (pod.get("spec") or {}).get("containers") or []
        container = containers[0] if containers else {}
        now = self._now()
        base_status = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "qosClass": "BestEffort",
            "startTime": now,
        }
        cstatus = {
            "name": container.get("name", "main"),
            "image": container.get("image", ""),
            "imageID": f"emulated://{container.get('image', '')}",
            "containerID": f"emulated://{uid}",
            "restartCount": 0,
        }
        log = self.workdir / f"{ns}_{name}.log"
        termination_log = self.workdir / f"{ns}_{name}.termination-log"
        log.touch()
        termination_log.touch()
        if self.instant is not None:
            result = self.instant(pod)
            code, message = (0, result) if isinstance(result, str) else result
            self._running[uid] = _Running(pod, None, log, termination_log, now)
            termination_log.write_text(message)
            self._finish(uid, code)
            return
        env = self._container_env(pod, container)
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if not container.get("command"):
            argv = [
                *self.entrypoints.get(container.get("image", ""), []),
                *(container.get("args") or []),
            ]
        if isinstance(env, str) or not argv:
            reason = (
                "CreateContainerConfigError" if isinstance(env, str) else "CreateContainerError"
            )
            message = (
                env
                if isinstance(env, str)
                else f"no command and no entrypoint known for image {container.get('image')!r}"
            )
            self.api.update_status(
                "pods",
                name,
                {
                    "phase": "Pending",
                    "hostIP": "127.0.0.1",
                    "qosClass": "BestEffort",
                    "startTime": now,
                    "containerStatuses": [
                        {
                            **cstatus,
                            "ready": False,
                            "started": False,
                            "state": {"waiting": {"reason": reason, "message": message}},
                        }
                    ],
                },
                ns,
            )
            return
        argv = [expand_vars(a, env) for a in argv]
        if os.path.basename(argv[0]) in ("python", "python3"):
            argv[0] = sys.executable
        proc_env = {
            **os.environ,
            **self.extra_env,
            **env,
            "KUBETUNE_TERMINATION_LOG": str(termination_log),
        }
        cwd = container.get("workingDir")
        if not cwd or not os.path.isdir(cwd):
            cwd = str(self.workdir)
        with log.open("ab") as out:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=proc_env,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                self.api.update_status(
                    "pods",
                    name,
                    {
                        **base_status,
                        "phase": "Failed",
                        "containerStatuses": [
                            {
                                **cstatus,
                                "ready": False,
                                "started": False,
                                "state": {
                                    "terminated": {
                                        "exitCode": 128,
                                        "reason": "StartError",
                                        "message": str(exc),
                                        "startedAt": now,
                                        "finishedAt": now,
                                    }
                                },
                            }
                        ],
                    },
                    ns,
                )
                if job is not None:
                    self._queue.put(lambda: self._account(uid, pod))
                return
        self._running[uid] = _Running(pod, proc, log, termination_log, now)
        self.api.update_status(
            "pods",
            name,
            {
                **base_status,
                "conditions": [
                    {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
                    for t in (
                        "PodReadyToStartContainers",
                        "Initialized",
                        "Ready",
                        "ContainersReady",
                        "PodScheduled",
                    )
                ],
                "containerStatuses": [
                    {
                        **cstatus,
                        "ready": True,
                        "started": True,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            },
            ns,
        )
        if job is not None:
            fresh = self.api.find("jobs", job["metadata"]["name"], ns)
            if fresh is not None:
                self._write_job_status(fresh, {**(fresh.get("status") or {}), "ready": 1})

        def wait() -> None:
            code = proc.wait()
            self._queue.put(lambda: self._finish(uid, code))

        threading.Thread(target=wait, name=f"wait-{name}", daemon=True).start()

    def _finish(self, uid: str, code: int) -> None:
        """The process ended: write the pod's terminal status, then account it in its Job."""
        run = self._running.pop(uid, None)
        if run is None:
            return
        pod = run.pod
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if code < 0:
            code = 128 - code  # killed by signal N -> 128 + N
        now = self._now()
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
        message = run.termination_log.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
        if (
            not message
            and code != 0
            and container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            lines = run.log.read_bytes().decode(errors="replace").splitlines()[-80:]
            message = "\n".join(lines)[-2048:]
        reason = "Completed" if code == 0 else "Error"
        if run.killed == "oom":
            reason, code = "OOMKilled", 137
        conditions = []
        if run.killed in DISRUPTIONS:
            d_reason, d_message = DISRUPTIONS[run.killed]
            conditions.append(
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "lastProbeTime": None,
                    "lastTransitionTime": now,
                    "reason": d_reason,
                    "message": d_message,
                }
            )
        if run.killed == "lost":
            reason, code, message = (
                "ContainerStatusUnknown",
                137,
                "The container could not be located when the pod was terminated",
            )
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": run.started,
            "finishedAt": now,
            "containerID": f"emulated://{uid}",
        }
        if message:
            terminated["message"] = message
        phase = "Succeeded" if code == 0 and not run.killed else "Failed"
        conditions += [
            {
                "type": t,
                "status": "False",
                "lastProbeTime": None,
                "lastTransitionTime": now,
                "reason": "PodCompleted" if phase == "Succeeded" else "PodFailed",
            }
            for t in ("Ready", "ContainersReady")
        ]
        status = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "qosClass": "BestEffort",
            "startTime": run.started,
            "conditions": conditions,
            "containerStatuses": [
                {
                    "name": container.get("name", "main"),
                    "image": container.get("image", ""),
                    "imageID": f"emulated://{container.get('image', '')}",
                    "containerID": f"emulated://{uid}",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {"terminated": terminated},
                }
            ],
        }
        final = dict(pod)
        final["status"] = status
        if run.killed not in ("deleted", "deadline"):
            with contextlib.suppress(ApiError):
                final = self.api.update_status("pods", name, status, ns)
        if run.killed != "deadline":
            self._account(uid, final)
        if run.killed in DISRUPTIONS:
            with contextlib.suppress(ApiError):  # a disrupted pod was being deleted
                self.api.delete("pods", name, ns)

    def _pod_deleted(self, uid: str, pod: JSON) -> None:
        self._stuck_pods.pop(uid, None)
        run = self._running.get(uid)
        if run is not None and run.proc is not None and run.proc.poll() is None:
            run.killed = run.killed or "deleted"
            self._kill(run)
        elif run is None and _controller_uid(pod) and uid not in self._accounted:
            owner_uid = _controller_uid(pod)
            for job in self.api.list("jobs", pod["metadata"]["namespace"]):
                if job["metadata"]["uid"] == owner_uid:
                    self._sync_job(job["metadata"]["namespace"], job["metadata"]["name"])

    @staticmethod
    def _kill(run: _Running) -> None:
        if run.proc is not None and run.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.proc.wait(5)  # SIGKILL is quick; a dead process is what callers expect

    def _match_rule(self, pod: JSON) -> tuple[int, JSON] | None:
        policy = None
        owner = _controller_uid(pod)
        job = next(
            (
                j
                for j in self.api.list("jobs", pod["metadata"]["namespace"])
                if j["metadata"]["uid"] == owner
            ),
            None,
        )
        if job is not None:
            policy = (job.get("spec") or {}).get("podFailurePolicy")
        status = pod.get("status") or {}
        for index, rule in enumerate((policy or {}).get("rules") or []):
            on_codes = rule.get("onExitCodes")
            if on_codes:
                for cs in status.get("containerStatuses") or []:
                    if on_codes.get("containerName") not in (None, cs.get("name")):
                        continue
                    code = ((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
                    if code is None or code == 0:
                        continue
                    inside = code in (on_codes.get("values") or [])
                    if inside == (on_codes.get("operator", "In") == "In"):
                        return index, {**rule, "_container": cs.get("name"), "_code": code}
            for pattern in rule.get("onPodConditions") or []:
                for cond in status.get("conditions") or []:
                    if cond.get("type") == pattern.get("type") and cond.get(
                        "status"
                    ) == pattern.get("status", "True"):
                        return index, {**rule, "_condition": cond.get("type")}
        return None

    def _account(self, uid: str, pod: JSON) -> None:
        """What the Job controller does when one of its pods reaches a terminal phase."""
        if uid in self._accounted:
            return
        self._accounted.add(uid)
        owner = _controller_uid(pod)
        ns = pod["metadata"]["namespace"]
        # Look the Job up by the name in the pod's owner reference (one read), not by listing
        # every Job of the namespace (quadratic at scale); the uid check keeps a re-created Job
        # of the same name from being charged for an old pod.
        ref: dict[str, Any] = next(
            (
                r
                for r in pod["metadata"].get("ownerReferences") or []
                if r.get("kind") == "Job" and r.get("controller")
            ),
            {},
        )
        if ref.get("name"):
            found = self.api.find("jobs", ref["name"], ns)
            job = found if found is not None and found["metadata"]["uid"] == owner else None
        else:
            job = next(
                (j for j in self.api.list("jobs", ns) if j["metadata"]["uid"] == owner), None
            )
        if job is None or _finished(job):
            return
        spec = job.get("spec") or {}
        status = dict(job.get("status") or {})
        now = self._now()
        phase = (pod.get("status") or {}).get("phase")
        status["active"] = 0
        status["ready"] = 0
        if phase == "Succeeded":
            status["succeeded"] = int(status.get("succeeded", 0)) + 1
            status["completionTime"] = now
            status["conditions"] = [
                *(status.get("conditions") or []),
                _condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                ),
                _condition(
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                ),
            ]
            self._write_job_status(job, status)
            return
        matched = self._match_rule(pod)
        action = matched[1].get("action", "Count") if matched else "Count"
        if action == "Ignore":
            self._write_job_status(job, status)
            self._sync_job(ns, job["metadata"]["name"])
            return
        status["failed"] = int(status.get("failed", 0)) + 1
        if action == "FailJob" and matched is not None:
            index, rule = matched
            pod_ref = f"{ns}/{pod['metadata']['name']}"
            if "_condition" in rule:
                message = (
                    f"Pod {pod_ref} has condition {rule['_condition']} "
                    f"matching FailJob rule at index {index}"
                )
            else:
                message = (
                    f"Container {rule['_container']} for pod {pod_ref} failed with exit code "
                    f"{rule['_code']} matching FailJob rule at index {index}"
                )
            self._fail_job(job, status, "PodFailurePolicy", message)
            return
        if status["failed"] > int(spec.get("backoffLimit", 6)):
            self._fail_job(
                job, status, "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            )
            return
        self._write_job_status(job, status)
        self._sync_job(ns, job["metadata"]["name"])

    def _fail_job(self, job: JSON, status: JSON, reason: str, message: str) -> None:
        now = self._now()
        for pod in self._pods_of(job):
            run = self._running.get(pod["metadata"]["uid"])
            if run is not None:
                run.killed = run.killed or "deadline"
                self._kill(run)
            if (pod.get("status") or {}).get("phase") in (None, "Pending", "Running"):
                with contextlib.suppress(ApiError):
                    self.api.delete("pods", pod["metadata"]["name"], pod["metadata"]["namespace"])
        status = {
            **status,
            "active": 0,
            "ready": 0,
            "conditions": [
                *(status.get("conditions") or []),
                _condition("FailureTarget", reason, message, now),
                _condition("Failed", reason, message, now),
            ],
        }
        self._write_job_status(job, status)

    def _check_deadlines(self) -> None:
        if not self._job_started:
            return
        now = time.monotonic()
        for job in self.api.list("jobs"):
            uid = job["metadata"]["uid"]
            deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
            started = self._job_started.get(uid)
            if (
                deadline is None
                or started is None
                or _finished(job)
                or now - started < float(deadline)
            ):
                continue
            self._fail_job(
                job,
                dict(job.get("status") or {}),
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            )

    # ---- fault verbs (thread-safe) ----------------------------------------------------------

    def _disrupt(self, pod_name: str, namespace: str, why: str) -> None:
        def task() -> None:
            pod = self.api.get("pods", pod_name, namespace)
            uid = pod["metadata"]["uid"]
            run = self._running.get(uid)
            if run is None:
                raise ApiError(
                    409, "Conflict", f"pod {namespace}/{pod_name} has no running process"
                )
            run.killed = why
            self._kill(run)

        self.call(task)

    def evict(self, pod_name: str, namespace: str = "default") -> None:
        """Eviction API: the pod fails with condition DisruptionTarget, then is deleted."""
        self._disrupt(pod_name, namespace, "evict")

    def lose_node(self, pod_name: str, namespace: str = "default") -> None:
        """The node vanished: DisruptionTarget (DeletionByTaintManager), status unknown."""
        self._disrupt(pod_name, namespace, "lost")

    def preempt(self, pod_name: str, namespace: str = "default") -> None:
        self._disrupt(pod_name, namespace, "preempt")

    def oom(self, pod_name: str, namespace: str = "default") -> None:
        """The container is OOM-killed: exit code 137, reason OOMKilled (no DisruptionTarget)."""
        self._disrupt(pod_name, namespace, "oom")

    def image_pull_error(self, job: str, namespace: str = "*", message: str = "") -> None:
        """Pods of matching Jobs (fnmatch pattern) created from now on wait in ErrImagePull."""
        self.call(lambda: self._stuck.append(("image", namespace, job, message)))

    def unschedulable(self, job: str, namespace: str = "*", message: str = "") -> None:
        """Pods of matching Jobs created from now on stay Pending with PodScheduled=False."""
        self.call(lambda: self._stuck.append(("unschedulable", namespace, job, message)))

    def heal(self) -> None:
        """Clear image-pull and scheduling faults; stuck pods start now."""

        def task() -> None:
            self._stuck.clear()
            for uid, _kind in list(self._stuck_pods.items()):
                del self._stuck_pods[uid]
                pod = next((p for p in self.api.list("pods") if p["metadata"]["uid"] == uid), None)
                if pod is None:
                    continue
                owner = _controller_uid(pod)
                job = next(
                    (j for j in self.api.list("jobs") if j["metadata"]["uid"] == owner), None
                )
                self._start_pod(pod, job)

        self.call(task)

    def _stuck_fault(self, namespace: str, job: str) -> tuple[str, str] | None:
        for kind, ns_pattern, job_pattern, message in self._stuck:
            if fnmatch.fnmatchcase(namespace, ns_pattern) and fnmatch.fnmatchcase(job, job_pattern):
                return ("unschedulable" if kind == "unschedulable" else "image", message)
        return None

    # ---- queries ----------------------------------------------------------------------------

    def active_pod(self, job: str, namespace: str = "default") -> str | None:
        """The name of the Job's pod that runs a process now, if any."""
        for pod in self.api.list("pods", namespace, f"batch.kubernetes.io/job-name={job}"):
            if (pod.get("status") or {}).get("phase") == "Running":
                return str(pod["metadata"]["name"])
        return None

    def running_processes(self) -> int:
        return int(
            self.call(
                lambda: sum(
                    1
                    for r in self._running.values()
                    if r.proc is not None and r.proc.poll() is None
                )
            )
        )

    def _log(self, namespace: str, name: str, params: Mapping[str, str]) -> str:
        path = self.workdir / f"{namespace}_{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        tail = params.get("tailLines")
        if tail and tail.isdigit():
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail) :]) if int(tail) else ""
        return text
