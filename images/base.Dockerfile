# Shared base layer for every showwork job image: the locked dependencies,
# installed before any code is copied so code changes reuse this layer.
# Build: docker build -f images/base.Dockerfile -t showwork-base .
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SHOWWORK_CACHE=/tmp/showwork-cache \
    SHOWWORK_LOG_FORMAT=json

WORKDIR /app
COPY lib/requirements.lock lib/requirements.lock
RUN pip install --no-deps -r lib/requirements.lock

COPY lib/ lib/
RUN pip install --no-deps ./lib \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin showwork
COPY jobs/ jobs/
COPY k8s/base/recipes/ recipes/
COPY k8s/components/ tiers/
USER 10001
