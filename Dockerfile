# trajstore: the storage server (default command) and the example simulation and analyst.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JAX_PLATFORMS=cpu \
    MPLCONFIGDIR=/tmp/matplotlib

RUN groupadd --system --gid 10001 trajstore \
    && useradd --system --uid 10001 --gid trajstore --create-home --home-dir /home/trajstore trajstore \
    && mkdir -p /data /out \
    && chown trajstore:trajstore /data /out

WORKDIR /opt/trajstore
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .

USER 10001:10001
# Listening beyond loopback needs tokens (TRAJSTORE_TOKENS or TRAJSTORE_TOKENS_FILE)
# or an explicit TRAJSTORE_INSECURE=1: the server refuses to start open otherwise.
ENV TRAJSTORE_DATA_DIR=/data \
    TRAJSTORE_LISTEN=0.0.0.0:50051
VOLUME ["/data"]
EXPOSE 50051 9464
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=5 \
    CMD ["trajstore", "health"]
ENTRYPOINT ["trajstore"]
CMD ["serve"]
