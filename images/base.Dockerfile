# Shared base layer for every showwork job image: the locked dependencies are
# installed before any code is copied, so a code change rebuilds only the last
# layers. JAX_PLATFORM picks the jax extra: cpu (kind, tests) or tpu (GKE v5e).
# Build: docker build -f images/base.Dockerfile --build-arg JAX_PLATFORM=tpu -t showwork-base .
FROM python:3.11.7-slim-bookworm

ARG JAX_PLATFORM=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SHOWWORK_CACHE=/tmp/showwork-cache \
    SHOWWORK_LOG_FORMAT=json \
    HOME=/tmp/showwork-home \
    HF_HOME=/tmp/showwork-home/hf \
    XDG_CACHE_HOME=/tmp/showwork-home/.cache

WORKDIR /app
COPY lib/requirements.lock lib/requirements.lock
# The lock is resolved for CPU; on TPU add libtpu through jax's tpu extra at the same jax version.
RUN pip install --no-deps -r lib/requirements.lock \
    && if [ "$JAX_PLATFORM" = "tpu" ]; then pip install "jax[tpu]==0.10.2"; fi

COPY lib/ lib/
RUN pip install --no-deps ./lib \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin showwork
COPY jobs/ jobs/
USER 10001
