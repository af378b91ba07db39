# syntax=docker/dockerfile:1
# copernica-ingest: one image for every role (receiver, worker, migrate, dashboard); the command
# picks the role. Build from the repository root:  docker build -t copernica-ingest .
# Default command: the receiver. Others: `ingest worker`, `ingest migrate`, `rq-dashboard ...`.

# --- build stage: a virtualenv with the project and its dependencies ---
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# The whole context (trimmed by .dockerignore) rather than a file list: pyproject.toml names
# README.md and package data, and a forgotten COPY would only fail at build time.
COPY . .
RUN /opt/venv/bin/pip install .

# --- runtime stage: no build context, no pip cache, not root ---
FROM python:3.11-slim
# A fixed numeric UID/GID so Kubernetes' runAsNonRoot can check it and mounted volumes can be
# chowned to it.
RUN groupadd --system --gid 10001 ingest \
 && useradd --system --uid 10001 --gid ingest --home-dir /app --no-create-home --shell /usr/sbin/nologin ingest
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INGEST_HOST=0.0.0.0 \
    INGEST_PORT=8080
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Liveness of the receiver, with the interpreter the image already has (slim has no curl).
# urlopen raises on a refused connection or a non-2xx answer, so the exit code says it all.
# Containers running another role (worker, migrate, dashboard) disable this check.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('INGEST_PORT', '8080'), timeout=2)"]
# The receiver and the RQ workers both shut down gracefully on SIGTERM (Docker's default, made
# explicit): in-flight batches are written, the current job finishes. Give the container a stop
# timeout to match (docker-compose.yml: stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["ingest", "serve"]
