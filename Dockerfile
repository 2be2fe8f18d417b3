# hashsvc: the gRPC hash-matching server.
#   docker build -t hashsvc .
#   docker run -p 50051:50051 -p 8080:8080 -p 9090:9090 -v hashsvc-data:/var/lib/hashsvc hashsvc
# tests/test_container.py lints this file with hadolint and builds and runs the builder's install
# outside Docker, so a change here is checked without a Docker engine.

# The Debian release is part of the tag so that the pinned compiler below stays installable.
FROM python:3.11-slim-trixie AS builder

# pdqhash (Meta's PDQ C++ code) is published only as a source distribution, and hashsvc's search
# kernel (hashsvc/matching/_mih.c) is C: both need a compiler, which stays in this stage.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends g++=4:14.2.0-1 \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the build reads ([tool.setuptools] packages and package-dir in pyproject.toml).
COPY pyproject.toml README.md ./
COPY hashsvc/ hashsvc/
COPY indexer/ indexer/
COPY clients/python/hashsvc_client/ clients/python/hashsvc_client/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir .


FROM python:3.11-slim-trixie

LABEL org.opencontainers.image.title="hashsvc" \
      org.opencontainers.image.description="Find known harmful images by perceptual-hash matching (PDQ, pHash, MD5, SHA-256) over gRPC." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-trixie"

RUN groupadd --system --gid 10001 hashsvc \
    && useradd --system --uid 10001 --gid hashsvc --home-dir /var/lib/hashsvc --no-create-home \
       --shell /usr/sbin/nologin hashsvc \
    && install --directory --owner=hashsvc --group=hashsvc --mode=0750 /var/lib/hashsvc

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HASHSVC_HOME=/var/lib/hashsvc \
    HASHSVC_LISTEN=0.0.0.0:50051 \
    HASHSVC_METRICS_LISTEN=0.0.0.0:9090

WORKDIR /var/lib/hashsvc
# The store, the snapshots and the key file. The first start creates an admin key in
# bootstrap-admin.key here.
VOLUME /var/lib/hashsvc
USER 10001:10001

# gRPC (scan, admin, health, reflection), the HTTP/JSON API and web console, and Prometheus
# metrics. HTTP is on 8080 by default (HASHSVC_HTTP_LISTEN=auto) except in `serve --role scan`.
EXPOSE 50051 8080 9090

# grpc.health.v1 on $HASHSVC_LISTEN: SERVING once a snapshot is loaded, NOT_SERVING while draining.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["hashsvc", "healthcheck"]

ENTRYPOINT ["hashsvc"]
CMD ["serve"]
