# mlink-capture: multi-stage build onto a slim image, non-root, data on a volume.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY capture ./capture
RUN python -m venv /opt/mlink-capture \
 && /opt/mlink-capture/bin/pip install --no-cache-dir .

FROM python:3.11-slim
# tzdata: the date partition and rotation boundaries follow an IANA zone (output.timezone).
# Not pinned (hadolint DL3008, the one exception): tzdata must follow the zone rules Debian
# ships (they change several times a year), and a pinned version fails the build once Debian
# replaces it; the base image's tag fixes the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 mlink \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/mlink-capture --create-home mlink
COPY --from=build /opt/mlink-capture /opt/mlink-capture
# The container's configuration (every option is documented in config/capture.toml); mount
# your own over it.  Data and the health file live on the volume.
COPY config/docker.toml /etc/mlink-capture/capture.toml
# glibc's malloc for Arrow, at most 2 arenas: lower peak RSS at the same throughput
# (bench/README.md; the daemon picks the same by itself).
# MLINK_CAPTURE_HEALTH_FILE: `docker exec CONTAINER mlink-capture status` (and health) read it.
ENV PATH=/opt/mlink-capture/bin:$PATH PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2 \
    ARROW_DEFAULT_MEMORY_POOL=system \
    MLINK_CAPTURE_HEALTH_FILE=/var/lib/mlink-capture/health.json
# Numeric, so that the runtime (and Kubernetes' runAsNonRoot) can tell it is not root.
USER 10001:10001
VOLUME ["/var/lib/mlink-capture"]
# HEALTHCHECK is a Docker image-format field: podman and buildah build OCI images by default,
# which drop it; build with `podman build --format docker` (or `buildah bud --format docker`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["mlink-capture", "health", "--file", "/var/lib/mlink-capture/health.json", "--max-age", "30"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["mlink-capture"]
CMD ["run", "--config", "/etc/mlink-capture/capture.toml"]
