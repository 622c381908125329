# The consumer service: `python -m consumer run ...` (arguments come from the Helm chart or
# `docker run IMAGE run --topic ...`). Build context: the repository root.
#
#   docker build -f docker/consumer.Dockerfile -t image-embedder-consumer .
#
# The base image is a build argument whose default is pinned by digest (the tag only documents
# it; bump both together). `make images` builds both images, with a stand-in base built from
# Debian packages when the pinned one cannot be pulled (docs/operations.md).
#
# Legacy builder and BuildKit both work; there is no `# syntax=` line, so nothing is pulled
# but the base.

ARG BASE_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

########## build: a virtual environment from the lock file ##########
FROM ${BASE_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
RUN python -m venv /opt/venv

# A proxy's CA bundle for pip, when the build needs one: `make images` copies it into
# docker/build-ca/ and passes PIP_CERT. Only this stage sees it; the runtime stage copies the
# venv and nothing else from here.
COPY docker/build-ca/ /etc/build-ca/
ARG PIP_CERT

# Third-party dependencies first, in their own layer, so a change to the code (or the README)
# does not reinstall them: the runtime dependencies and the s3 extra as pyproject.toml lists
# them, every version from the lock file (used as constraints, so the development tools the
# lock also pins are not installed).
COPY requirements.lock pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies'].get('s3', [])))" \
        > /tmp/runtime-requirements.txt \
    && pip install --constraint requirements.lock --requirement /tmp/runtime-requirements.txt

# Then the project itself, apart from the venv (/opt/app, on PYTHONPATH): a code change leaves
# /opt/venv untouched, so the runtime stage's copy of it stays cached.
COPY README.md ./
COPY consumer/ consumer/
COPY producer/ producer/
COPY schemas/ schemas/
RUN pip install --no-deps --target /opt/app . \
    && PYTHONPATH=/opt/app pip check

########## runtime: the interpreter, the venv, the project and nothing else ##########
FROM ${BASE_IMAGE} AS runtime

ARG APP_UID=10001
ARG APP_GID=10001

LABEL org.opencontainers.image.title="image-embedder-consumer" \
      org.opencontainers.image.description="Kafka image URIs to Milvus vectors: the consumer service" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid "${APP_GID}" app \
    && useradd --system --no-log-init --uid "${APP_UID}" --gid app \
       --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /var/cache/image-embedder/jax \
    && chown -R "${APP_UID}:${APP_GID}" /var/cache/image-embedder

COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/app /opt/app

# JAX runs on the CPU here and keeps its compiled preprocessing in a persistent cache (mount a
# volume on it, or an emptyDir with a read-only root filesystem, to keep restarts fast).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/app/bin:/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    JAX_PLATFORMS=cpu \
    JAX_COMPILATION_CACHE_DIR=/var/cache/image-embedder/jax \
    IMAGE_EMBEDDER_COMPILATION_CACHE_DIR=/var/cache/image-embedder/jax \
    XDG_CACHE_HOME=/tmp/cache

WORKDIR /home/app
USER 10001:10001

# /metrics, /livez and /readyz (--metrics-port).
EXPOSE 9108

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9108/livez', timeout=4).status != 200)"]

# Exec form: Python is PID 1 and receives SIGTERM directly, so it can drain and commit.
ENTRYPOINT ["python", "-m", "consumer"]
CMD ["run"]
