# syntax=docker/dockerfile:1
# edgeloop agent image, for devices that run containers (x86 gateways, Jetson with the NVIDIA
# container runtime). Devices without a container engine use deploy/systemd/install-agent.sh.
#   docker build -f deploy/docker/agent.Dockerfile -t edgeloop-agent:0.1.0 .
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ... (same pins).
# Pins: base image by exact tag (use tag@sha256:<digest> in CI), Python packages by constraints.txt.
# Only the agent extra: no torch, fastapi, sqlmodel or flwr (tests/contract checks the extra).

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
 && /opt/edgeloop/venv/bin/pip install --no-cache-dir -c constraints.txt ".[agent]" \
 && /opt/edgeloop/venv/bin/python -m compileall -q /opt/edgeloop/venv/lib

FROM python:3.11.7-slim-bookworm
ARG UID=10001
RUN groupadd --system --gid "${UID}" edgeloop \
 && useradd --system --uid "${UID}" --gid edgeloop --home-dir /var/lib/edgeloop --no-create-home \
      --shell /usr/sbin/nologin edgeloop \
 && mkdir -p /var/lib/edgeloop /etc/edgeloop \
 && chown edgeloop:edgeloop /var/lib/edgeloop
COPY --from=build /opt/edgeloop/venv /opt/edgeloop/venv
COPY firmware_images/*.toml /opt/edgeloop/profiles/
ENV PATH=/opt/edgeloop/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGELOOP_PROFILES_DIR=/opt/edgeloop/profiles \
    EDGELOOP_AGENT_DEVICE_DATA_DIR=/var/lib/edgeloop \
    EDGELOOP_INFERENCE_SOCKET=/var/lib/edgeloop/inference.sock
USER ${UID}:${UID}
WORKDIR /var/lib/edgeloop
# Identity, slots and the telemetry queue must survive the container: mount a volume here.
VOLUME ["/var/lib/edgeloop"]
# Healthy = the daemon's event loop answers on its local inference socket (with
# EDGELOOP_AGENT_INFERENCE_ENABLED=false there is none: override with --no-healthcheck).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["edgeloop-agent", "models", "--json"]
ENTRYPOINT ["edgeloop-agent"]
CMD ["run"]
