# syntax=docker/dockerfile:1
# kubetune operator image: `kubetune operator`, no torch, non-root, read-only-root friendly.
# Build from the repository root:  docker build -t kubetune:0.1.0 .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: make the wheel and install it with its runtime dependencies into a venv ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer-image/kubetune_trainer/ trainer-image/kubetune_trainer/
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/kubetune \
 && /opt/kubetune/bin/pip install /wheels/kubetune-*.whl \
 && /opt/kubetune/bin/kubetune --help > /dev/null

# ---- runtime: the venv only; no compilers, no build tools, no source tree ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="Kubernetes-native hyperparameter tuning operator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/kubetune/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
COPY --from=build /opt/kubetune /opt/kubetune
# Numeric user so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
WORKDIR /tmp
# metrics, health (/healthz), report API
EXPOSE 8080 8081 8082
ENTRYPOINT ["kubetune", "operator"]
