# syntax=docker/dockerfile:1
# kubetune operator image: `kubetune operator`, no torch, non-root, read-only-root friendly.
# Build it from the repository root with scripts/build-images (Docker, or buildah without a
# Docker daemon); by hand:  docker build -t localhost/kubetune:0.1.0 .
#
# PYTHON_IMAGE is any Debian-based image with Python 3.11 and its venv module: the official
# python:3.11-slim-bookworm by default, or the mmdebstrap base scripts/build-images makes when
# there is no registry. Both stages must use the same image: the venv's interpreter is the
# base image's.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: install the operator and only its own dependencies into a venv ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer-image/kubetune_trainer/ trainer-image/kubetune_trainer/
# What stays out of the venv: pip and setuptools, the dependencies' test suites, the kubernetes
# package's asyncio client (kubernetes.aio, 66 MB: kopf talks to the API itself and kubetune
# uses the synchronous client), and the dependencies' bytecode (~100 MB of .pyc; the operator
# compiles what it imports in memory at start, about 2-4 s of CPU once per start, which the
# read-only root would not let it cache anyway). kubetune's own modules are compiled.
RUN python3 -m venv /opt/kubetune \
 && /opt/kubetune/bin/pip install --no-compile . \
 && /opt/kubetune/bin/pip uninstall --yes pip setuptools \
 && site="$(/opt/kubetune/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && rm -rf "${site}/kubernetes/aio" \
 && find "${site}" -depth -type d -name tests -exec rm -rf {} + \
 && /opt/kubetune/bin/python -m compileall -q "${site}/kubetune" \
 && PYTHONDONTWRITEBYTECODE=1 /opt/kubetune/bin/kubetune --help > /dev/null

# ---- runtime: the base image plus the venv; no compilers, no pip, no source tree ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="Kubernetes-native hyperparameter tuning operator" \
      org.opencontainers.image.licenses="Apache-2.0"
# MALLOC_ARENA_MAX: glibc gives each thread (8 ledger threads, the API client's) its own
# malloc arena, and the Job and Pod bodies parsed in them leave each arena fragmented; two
# arenas held the operator's peak 10 MiB lower at 1,500 Jobs (benchmarks/README.md, scale).
ENV PATH=/opt/kubetune/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    HOME=/tmp \
    TMPDIR=/tmp
COPY --from=build /opt/kubetune /opt/kubetune
# Numeric user so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
WORKDIR /tmp
# metrics (/metrics), health (/healthz), report API: the chart's containerPorts.
EXPOSE 8080 8081 8082
# The chart passes only flags (--namespace, --log-format) as args. Other commands:
#   --entrypoint kubetune IMAGE --help
ENTRYPOINT ["kubetune", "operator"]
