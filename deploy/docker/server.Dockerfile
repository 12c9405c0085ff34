# syntax=docker/dockerfile:1
# edgeloop fleet server image. Build from the repository root:
#   docker build -f deploy/docker/server.Dockerfile -t edgeloop-server:0.1.0 .
# Pins: the base image by exact tag (replace with tag@sha256:<digest> from your registry mirror in
# CI: `docker buildx imagetools inspect python:3.11.7-slim-bookworm`), every Python package by
# constraints.txt (the same pins `make setup` uses). No compiler extra (torch): compile jobs run in
# their own image, see deploy/README.md.

FROM python:3.11.7-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY protos ./protos
COPY agent ./agent
COPY fleet_server ./fleet_server
COPY compiler ./compiler
RUN python -m venv /opt/edgeloop/venv \
 && /opt/edgeloop/venv/bin/pip install --no-cache-dir -c constraints.txt ".[server]" \
 && /opt/edgeloop/venv/bin/python -m compileall -q /opt/edgeloop/venv/lib

FROM python:3.11.7-slim-bookworm
ARG UID=10001
RUN groupadd --system --gid "${UID}" edgeloop \
 && useradd --system --uid "${UID}" --gid edgeloop --home-dir /var/lib/edgeloop --no-create-home \
      --shell /usr/sbin/nologin edgeloop \
 && mkdir -p /var/lib/edgeloop \
 && chown edgeloop:edgeloop /var/lib/edgeloop
COPY --from=build /opt/edgeloop/venv /opt/edgeloop/venv
COPY firmware_images/*.toml /opt/edgeloop/profiles/
ENV PATH=/opt/edgeloop/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGELOOP_DATA_DIR=/var/lib/edgeloop \
    EDGELOOP_HTTP_HOST=0.0.0.0 \
    EDGELOOP_HTTP_PORT=8080 \
    EDGELOOP_GRPC_HOST=0.0.0.0 \
    EDGELOOP_ENROLL_PORT=7443 \
    EDGELOOP_DEVICE_PORT=7444 \
    EDGELOOP_LOG_FORMAT=json \
    EDGELOOP_PROFILES_DIR=/opt/edgeloop/profiles
USER ${UID}:${UID}
WORKDIR /var/lib/edgeloop
VOLUME ["/var/lib/edgeloop"]
EXPOSE 8080 7443 7444
# Liveness of the process and its database; Kubernetes uses /healthz and /readyz probes instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EDGELOOP_HTTP_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["edgeloop-server"]
CMD ["run"]
