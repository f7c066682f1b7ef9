# syntax=docker/dockerfile:1.7
# mig-extender: one image for every component (extender, webhook, reconciler, tools), picked by the
# first argument of the `mig-extender` entry point.
#
#   docker build -t mig-extender:0.1.0 .
#
# Two stages: the builder turns this checkout and every dependency into wheels; the final stage
# installs only those wheels (no index, no compiler, no cache, pip removed afterwards) and runs as
# an unprivileged numeric user, so `runAsNonRoot` works without a runAsUser in the pod.
# Reproducible: the base image is pinned by version (pin its digest too, see docs/install.md), and
# SOURCE_DATE_EPOCH fixes the timestamps inside the wheel.

ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SOURCE_DATE_EPOCH=315532800
WORKDIR /src
# .dockerignore lets in only what the package build reads (setup.cfg, setup.py, the package, README)
COPY . .
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mig-extender" \
      org.opencontainers.image.description="Scheduler extender, admission webhook and reconciler that let pods use a compatible larger free NVIDIA MIG slice" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the builder, never copied: no layer keeps them.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels mig-extender \
 && pip uninstall --yes pip \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin nonroot
USER 65532:65532
WORKDIR /tmp
EXPOSE 8888 8443 9090 9091
ENTRYPOINT ["mig-extender"]
CMD ["--help"]
