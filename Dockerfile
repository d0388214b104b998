# Lathe: one image for the API, the migration job and the Celery workers.
#
#   CPU (default):  docker build -t lathe:cpu .
#   GPU:            docker build -t lathe:gpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#
# docker-compose.yml builds both variants from this file.

FROM python:3.11-slim

# Where torch comes from. The default is PyTorch's CPU-only index (~200 MB wheel, no CUDA).
# PyPI's Linux x86_64 torch wheels are the CUDA builds (they pull the nvidia-* runtime wheels), so
# the GPU image just points this at PyPI; a specific https://download.pytorch.org/whl/cuXYZ index
# works too.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# onnxruntime (CPU provider) by default; the GPU image takes onnxruntime-gpu instead (the two
# install the same `onnxruntime` module: never both).
ARG ORT_PACKAGE=onnxruntime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LATHE_DATA_DIR=/data

# Unprivileged runtime user. /data is created and owned here because Docker seeds an empty named
# volume with the ownership of the image directory it is mounted over; without this the shared
# volume would be root-owned and the api/workers could not write artifacts.
RUN groupadd --system --gid 1000 lathe \
 && useradd --system --uid 1000 --gid lathe --home-dir /home/lathe --create-home lathe \
 && mkdir -p /data \
 && chown lathe:lathe /data

WORKDIR /app

# Layer 1 (changes almost never): torch, first and on its own, from the chosen index. Must match
# the pin in pyproject.toml. Installing it before the project means the later `pip install` sees
# torch==2.13.0 already satisfied (a `+cpu` local version satisfies `==2.13.0`) and does not
# replace it with the multi-GB CUDA build from PyPI.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

# Layer 2 (changes when dependencies change): the project's other runtime dependencies, read from
# pyproject.toml alone so editing source code does not re-download them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project'].get('dependencies', [])))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && if [ "${ORT_PACKAGE}" != "onnxruntime" ]; then pip uninstall -y onnxruntime && pip install "${ORT_PACKAGE}"; fi \
 && rm /tmp/requirements.txt

# Layer 3 (changes with every code edit): the project itself. The whole build context is copied
# (minus .dockerignore) so that alembic.ini and alembic/ sit in the working directory for
# `lathe migrate`, and README.md is there for the package metadata. Dependencies are already in
# place, so this is quick.
COPY . .
RUN pip install --no-deps onnx2torch==1.5.15 \
 && pip install ./client . \
 && rm -rf build *.egg-info client/build client/*.egg-info

USER lathe

EXPOSE 8000

# Liveness only (/healthz: process up). Readiness (/readyz: db + broker) is left to whoever
# orchestrates. python rather than curl: slim images have no curl. urlopen raises on connection
# errors and on non-2xx answers, so any failure exits non-zero. Worker containers reuse this image
# and switch the check off in docker-compose.yml (they serve no HTTP).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["lathe", "api", "--host", "0.0.0.0", "--port", "8000"]
