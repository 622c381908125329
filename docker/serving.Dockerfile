# The reference model server: EfficientNet-Lite0 in JAX behind Triton (PyTriton).
# Build context: the repository root.
#
#   docker build -f docker/serving.Dockerfile -t image-embedder-serving .
#
# The base image is a build argument whose default is pinned by digest (the tag only documents
# it; bump both together). `make images` builds both images, with a stand-in base built from
# Debian packages when the pinned one cannot be pulled (docs/operations.md).
#
# Legacy builder and BuildKit both work; there is no `# syntax=` line, so nothing is pulled
# but the base.

ARG BASE_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

########## build: the model server's own virtual environment (numpy<2) ##########
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

# The lock file is complete, so --no-deps installs exactly what it lists.
COPY serving/requirements.lock serving/requirements.lock
RUN pip install --no-deps --requirement serving/requirements.lock \
    && pip check

########## runtime ##########
FROM ${BASE_IMAGE} AS runtime

ARG APP_UID=10001
ARG APP_GID=10001

LABEL org.opencontainers.image.title="image-embedder-serving" \
      org.opencontainers.image.description="EfficientNet-Lite0 embeddings served by Triton (PyTriton)" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid "${APP_GID}" app \
    && useradd --system --no-log-init --uid "${APP_UID}" --gid app \
       --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /var/cache/serving/jax \
    && chown -R "${APP_UID}:${APP_GID}" /var/cache/serving

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY schemas/ schemas/
COPY serving/ serving/

# Triton's Python backend stub links against libpython3.11.so, which the upstream base keeps in
# the interpreter's LIBDIR (/usr/local/lib; the stand-in base: /usr/lib/x86_64-linux-gnu, on the
# default search path). The server also puts LIBDIR first on LD_LIBRARY_PATH for Triton's
# children (serving/server.py). PyTriton keeps its workspace under XDG_CACHE_HOME;
# the JAX compilation cache goes to /var/cache/serving/jax (--cache-dir below).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LD_LIBRARY_PATH=/usr/local/lib \
    JAX_PLATFORMS=cpu \
    XDG_CACHE_HOME=/tmp/cache

USER 10001:10001

# Triton HTTP, gRPC and metrics.
EXPOSE 8000 8001 8002

HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/models/efficientnet_lite0/ready', timeout=4).status != 200)"]

# Exec form: Python is PID 1 and receives SIGTERM directly, so Triton is stopped cleanly.
ENTRYPOINT ["python", "-m", "serving"]
CMD ["--host", "0.0.0.0", "--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002", \
     "--cache-dir", "/var/cache/serving/jax"]
