# syntax=docker/dockerfile:1
# Build stage: resolve and install dependencies into a virtualenv.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/ingest
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY app ./app
COPY jobs ./jobs
COPY sql ./sql
COPY migrations ./migrations
# Editable install: the code, its SQL and its migrations stay together under /srv/ingest.
# No `local` extra: embedded PostgreSQL (41 MB) is for `make run` and the tests, never here.
RUN /opt/venv/bin/pip install -e .

# Runtime stage: no compilers, no pip cache, a non-root user.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8787
RUN useradd --system --uid 10001 --home-dir /srv/ingest ingest
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=ingest:ingest /srv/ingest /srv/ingest
WORKDIR /srv/ingest
USER ingest
EXPOSE 8787
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8787\")}/health', timeout=2)"
CMD ["ingest", "serve"]
