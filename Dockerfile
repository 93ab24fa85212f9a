# ClipSync Edge: the gateway (`clipsync serve`, the default command) and the transcode worker
# (`clipsync worker`) in one image.
#
#   docker build -t clipsync-edge .
#   docker run -d -p 8080:8080 -v clipsync-data:/data clipsync-edge
#   docker run ... clipsync-edge worker --redis redis://redis:6379/0 --library s3://bucket/media
#
# Settings come from CLIPSYNC_<SECTION>__<KEY> environment variables (README, Settings).
# PYTHON_IMAGE: a mirror of the same base can be named here; both stages must use the same one,
# because the virtual environment is tied to that interpreter's path.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/clipsync
WORKDIR /src
# The resolved versions the test suite runs with (tests/constraints.txt pins every package,
# runtime ones included): the image gets what CI tested, not whatever is newest today.
COPY tests/constraints.txt tests/constraints.txt
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY packager packager
COPY backends backends
COPY auth auth
COPY conf conf
# --only-binary: every dependency must come as a wheel (PyAV, numpy, granian, asyncpg, ... all
# ship manylinux wheels), so no compiler is needed here either and a dependency that would need
# one fails the build instead of pulling in a toolchain. Our own package is pure Python.
# pip compiles the byte code now, as the final image's root filesystem may be read-only.
# The otel extra too: traces are then a setting away (tracing.enabled).
RUN /opt/clipsync/bin/pip install --only-binary=:all: -c tests/constraints.txt '.[otel]'

FROM ${PYTHON_IMAGE}
# A fixed uid/gid, so volume ownership and Kubernetes' runAsUser/fsGroup can name it.
ARG UID=10001
RUN groupadd --system --gid "${UID}" clipsync \
    && useradd --system --uid "${UID}" --gid clipsync --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin clipsync \
    && mkdir -p /data/library \
    && chown -R "${UID}:${UID}" /data
COPY --from=builder /opt/clipsync /opt/clipsync
ENV PATH=/opt/clipsync/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLIPSYNC_SERVER__HOST=0.0.0.0 \
    CLIPSYNC_SERVER__PORT=8080 \
    CLIPSYNC_STORAGE__LIBRARY=/data/library \
    CLIPSYNC_CATALOG__URL=sqlite:////data/catalog.sqlite3 \
    CLIPSYNC_MAIL__OUTBOX=/data/outbox
# Everything the defaults write (library, SQLite catalog, mail outbox) is under /data. A named
# volume starts as a copy of it; an empty bind mount needs its library/ folder made first.
WORKDIR /data
VOLUME ["/data"]
USER ${UID}:${UID}
EXPOSE 8080
# No curl in the slim image: Python's urllib asks the gateway's liveness endpoint.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CLIPSYNC_SERVER__PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["clipsync"]
CMD ["serve"]
