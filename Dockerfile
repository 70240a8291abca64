# mlink-capture: multi-stage build onto a slim image, non-root, data on a volume.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY capture ./capture
RUN python -m venv /opt/mlink-capture \
 && /opt/mlink-capture/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/mlink-capture/bin/pip install --no-cache-dir .

FROM python:3.11-slim
# tzdata: the date partition and rotation boundaries follow an IANA zone (output.timezone).
RUN apt-get update \
 && apt-get install -y --no-install-recommends tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/mlink-capture --create-home mlink
COPY --from=build /opt/mlink-capture /opt/mlink-capture
# The container's configuration (every option is documented in config/capture.toml); mount
# your own over it.  Data and the health file live on the volume.
COPY config/docker.toml /etc/mlink-capture/capture.toml
# glibc's malloc for Arrow, at most 2 arenas: lower peak RSS at the same throughput
# (bench/README.md; the daemon picks the same by itself).
ENV PATH=/opt/mlink-capture/bin:$PATH PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2 \
    ARROW_DEFAULT_MEMORY_POOL=system
USER mlink
VOLUME ["/var/lib/mlink-capture"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["mlink-capture", "health", "--file", "/var/lib/mlink-capture/health.json", "--max-age", "30"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["mlink-capture"]
CMD ["run", "--config", "/etc/mlink-capture/capture.toml"]
