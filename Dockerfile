# Engine image: one `sie worker` per container, configured only by SIE_* variables.
#   docker build -t sie-worker .
#   docker run --rm -e SIE_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 -e SIE_TRITON__URL=triton:8001 sie-worker
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Unprivileged user owning only the worker's data directory.
RUN groupadd --system --gid 10001 sie \
    && useradd --system --uid 10001 --gid sie --home-dir /home/sie --create-home --shell /usr/sbin/nologin sie \
    && mkdir -p /var/lib/sie \
    && chown sie:sie /var/lib/sie

WORKDIR /opt/sie
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY streams ./streams
COPY inference ./inference
COPY models ./models
COPY observability ./observability
COPY ops ./ops
# The production install documented in the README ("Production"): the package, no extras.
RUN pip install .

USER sie:sie
WORKDIR /home/sie
ENV SIE_DATA_DIR=/var/lib/sie \
    SIE_METRICS_PORT=9300
EXPOSE 9300

HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://localhost:9300/healthz', timeout=3)"]

ENTRYPOINT ["sie"]
CMD ["worker"]
