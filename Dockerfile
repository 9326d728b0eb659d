# nodesysctl: one image for the operator (`nodesysctl run`, non-root) and the node agent that its
# Jobs run (`python -m nodesysctl.agent`, as root: the Job sets runAsUser 0 and privileged).
#
# The base is pinned by digest. This digest of python:3.11-slim-bookworm was taken from a public
# record, not re-resolved here (no registry access where this file was written); refresh it with
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
# and keep the tag in front of it for readers. Both stages must use the same base (the venv
# links /usr/local/bin/python3.11; tests/unit/test_manifests.py checks the two FROM lines agree).

# --- builder: the project's wheel plus its locked dependencies ------------------------------
# requirements.lock pins every dependency to one file by hash; `make image` (devcluster/images.py,
# the image the dev cluster's real nodes run) installs the same lock, so the two cannot drift.
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91 AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY requirements.lock pyproject.toml ./
COPY operator ./operator
RUN python -m pip download --only-binary=:all: --require-hashes --dest /wheels -r requirements.lock \
    && python -m pip wheel --no-deps --wheel-dir /wheels .

# --- final: a venv installed from those wheels only (no network, no compiler, no pip) --------
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
LABEL org.opencontainers.image.title="nodesysctl" \
      org.opencontainers.image.description="Keeps node ephemeral port ranges clear of the Service NodePort range" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,from=builder,source=/src/requirements.lock,target=/requirements.lock \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links=/wheels --require-hashes -r /requirements.lock \
    && /opt/venv/bin/pip install --no-index --no-deps /wheels/nodesysctl-*.whl \
    && /opt/venv/bin/pip uninstall --yes pip \
    && groupadd --system --gid 65532 nodesysctl \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin nodesysctl
# The operator runs as this user; the agent Job overrides it with runAsUser: 0 (it must write
# /proc/sys/net on the host network namespace) and runs `python -m nodesysctl.agent`.
USER 65532:65532
# Kubernetes ignores HEALTHCHECK; the Deployment probes Kopf's /healthz, the agent serves nothing.
# checkov:skip=CKV_DOCKER_2: Kubernetes liveness/readiness probes are the health checks
EXPOSE 8080
ENTRYPOINT ["nodesysctl"]
CMD ["run"]
