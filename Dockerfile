# syntax=docker/dockerfile:1
#
# NeuTRENO Serve image: ONNX Runtime + FastAPI, no torch.
#
#   docker build --target gpu -t neutreno-serve:gpu .   # CUDA 13 + cuDNN 9, onnxruntime-gpu
#   docker build --target cpu -t neutreno-serve:cpu .   # onnxruntime (CPU)
#
# Both targets run the same virtual environment layout (/opt/venv on a relocatable CPython in
# /opt/python), as the non-root user `neutreno` (uid 10001), serving /app/model_repository on :8000.

ARG PYTHON_VERSION=3.12
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG CPU_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
# builder: a standalone CPython (python-build-standalone via uv; set UV_PYTHON_INSTALL_MIRROR for a
# mirror) and an empty venv, both under /opt so they copy unchanged into any glibc base image
FROM python:3.12-slim-bookworm AS builder
ARG PYTHON_VERSION
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    VIRTUAL_ENV=/opt/venv
RUN pip install --no-cache-dir uv==0.13.8 \
    && uv python install "${PYTHON_VERSION}" \
    && uv venv --python "${PYTHON_VERSION}" /opt/venv
WORKDIR /src
# Third-party dependencies first (cached until pyproject.toml changes).
COPY pyproject.toml README.md ./

# ---------------------------------------------------------------------------------------------
# deps-cpu / deps-gpu: the `serve` extra (never `train`: no torch), then the project's serving
# packages: the CLI, the service and export/ (bundle reader, op definition; torch-free). models/
# (PyTorch) and bench/ stay out of the image.
FROM builder AS deps-cpu
RUN uv pip install -r pyproject.toml --extra serve
COPY neutreno/ neutreno/
COPY service/ service/
COPY export/ export/
RUN uv pip install --no-deps . \
    && python_bin=/opt/venv/bin/python \
    && "$python_bin" -c "import onnxruntime, service; print(onnxruntime.get_available_providers())" \
    && if "$python_bin" -c "import torch" 2>/dev/null; then echo "torch must not be installed" >&2; exit 1; fi

FROM deps-cpu AS deps-gpu
# onnxruntime-gpu replaces the CPU wheel: both own the `onnxruntime` package directory, so the CPU
# wheel is removed before the GPU wheel goes in. The PyPI onnxruntime-gpu wheels (>= 1.24) are
# built for CUDA 13 + cuDNN 9 (libcudart.so.13, libcublas.so.13, libcudnn.so.9), which is what
# CUDA_IMAGE provides. 1.31.1 is the newest onnxruntime-gpu on PyPI (there is no 1.32.0 yet).
ARG ORT_GPU_VERSION=1.31.1
RUN uv pip uninstall onnxruntime \
    && uv pip install "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && /opt/venv/bin/python -c "import onnxruntime, service; assert 'CUDAExecutionProvider' in onnxruntime.get_available_providers()"

# ---------------------------------------------------------------------------------------------
# cpu: Debian slim + onnxruntime
FROM ${CPU_IMAGE} AS cpu
LABEL org.opencontainers.image.title="neutreno-serve" \
      org.opencontainers.image.description="NeuTRENO models on ONNX Runtime (CPU)" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 neutreno \
    && useradd --system --uid 10001 --gid neutreno --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin neutreno
COPY --from=deps-cpu /opt/python /opt/python
COPY --from=deps-cpu /opt/venv /opt/venv
WORKDIR /app
COPY --chown=neutreno:neutreno model_repository/ /app/model_repository/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NEUTRENO_MODEL_REPOSITORY=/app/model_repository \
    NEUTRENO_DEVICE=cpu \
    NEUTRENO_HOST=0.0.0.0 \
    NEUTRENO_PORT=8000
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["neutreno", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------
# gpu (default target, last): NVIDIA CUDA runtime with cuDNN + onnxruntime-gpu
FROM ${CUDA_IMAGE} AS gpu
LABEL org.opencontainers.image.title="neutreno-serve" \
      org.opencontainers.image.description="NeuTRENO models on ONNX Runtime (CUDA)" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 neutreno \
    && useradd --system --uid 10001 --gid neutreno --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin neutreno
COPY --from=deps-gpu /opt/python /opt/python
COPY --from=deps-gpu /opt/venv /opt/venv
WORKDIR /app
COPY --chown=neutreno:neutreno model_repository/ /app/model_repository/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NEUTRENO_MODEL_REPOSITORY=/app/model_repository \
    NEUTRENO_DEVICE=cuda \
    NEUTRENO_HOST=0.0.0.0 \
    NEUTRENO_PORT=8000 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["neutreno", "serve", "--host", "0.0.0.0", "--port", "8000"]
