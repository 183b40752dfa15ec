# Shared base layer for every showwork job image: the locked runtime dependencies in /opt/venv,
# installed before any code is copied, so a code change rebuilds only the last layers.
#   PYTHON_BASE   the official Python image, pinned by digest (the digest python:3.11.7-slim-bookworm
#                 had when published, as pinned in nalabelle/build's images/digests.Dockerfile); where
#                 no registry is reachable, scripts/build-images.sh --debian-base builds a stand-in
#                 from Debian's packages (bookworm's python3 is 3.11 too).
#   JAX_PLATFORM  cpu (kind, tests) or tpu (GKE v5e: adds libtpu from lib/requirements-tpu.lock).
# Build: scripts/build-images.sh (this image and the four stage images, as skaffold builds them).
ARG PYTHON_BASE=python:3.11.7-slim-bookworm@sha256:d11b9bd5e49ea7401753d78f4d3b56f3aec952b85b49bcae88981f0452818e0b

# Build stage: a compiler for the one locked package with no wheel for Linux x86-64 (pycosat, via
# reasoning-gym), and the virtualenv every dependency goes into. Nothing of it but /opt/venv
# reaches the runtime image: no compiler, and no build-time pip settings (images/pip/).
FROM ${PYTHON_BASE} AS build
ARG JAX_PLATFORM=cpu
COPY images/pip/ /tmp/pip/
COPY lib/requirements.lock lib/requirements-tpu.lock /tmp/lock/
# hadolint ignore=DL3008
RUN set -eu; \
    if [ -f /tmp/pip/ca.crt ]; then export PIP_CERT=/tmp/pip/ca.crt; fi; \
    headers="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"; \
    extra=""; [ -f "$headers/Python.h" ] || extra="python3-dev"; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends gcc libc6-dev $extra > /dev/null; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -q --no-deps -r /tmp/lock/requirements.lock; \
    if [ "$JAX_PLATFORM" = "tpu" ]; then \
      /opt/venv/bin/pip install --no-cache-dir -q --no-deps --require-hashes -r /tmp/lock/requirements-tpu.lock; \
    fi
# showwork itself as a wheel (its build backend comes from the index): a code change rebuilds from here.
COPY lib/ /tmp/lib/
RUN set -eu; \
    if [ -f /tmp/pip/ca.crt ]; then export PIP_CERT=/tmp/pip/ca.crt; fi; \
    /opt/venv/bin/pip wheel --no-cache-dir --disable-pip-version-check -q --no-deps -w /tmp/wheels /tmp/lib

FROM ${PYTHON_BASE}
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SHOWWORK_CACHE=/tmp/showwork-cache \
    SHOWWORK_LOG_FORMAT=json \
    HOME=/tmp/showwork-home \
    HF_HOME=/tmp/showwork-home/hf \
    XDG_CACHE_HOME=/tmp/showwork-home/.cache
COPY --from=build /opt/venv /opt/venv
COPY --from=build /tmp/wheels/ /tmp/wheels/
WORKDIR /app
# No network here: a wheel installs without one. The user is written into /etc/passwd directly
# (the Debian stand-in base has no useradd); pods run as 10001 anyway.
RUN pip install --no-deps --no-compile -q /tmp/wheels/showwork-*.whl \
    && rm -rf /tmp/wheels \
    && echo "showwork:x:10001:10001::/tmp/showwork-home:/usr/sbin/nologin" >> /etc/passwd \
    && echo "showwork:x:10001:" >> /etc/group
COPY jobs/ jobs/
USER 10001
