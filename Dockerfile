# NeuTRENO Serve image: ONNX Runtime + FastAPI on Debian's Python 3.11, no torch.
#
#   make image        # --target cpu -> neutreno-serve:cpu (onnxruntime)
#   make image-gpu    # --target gpu -> neutreno-serve:gpu (onnxruntime-gpu + CUDA 13 / cuDNN 9 wheels)
#
# Everything comes from package registries: the OS and Python from Debian, the rest from PyPI, so
# the build works where only package mirrors are reachable. Build settings (all optional):
#   --build-arg BASE_IMAGE=...      Debian bookworm base (default Debian's bookworm-slim; `make
#                                   base-image` makes it with mmdebstrap when it cannot be pulled)
#   --build-arg PIP_INDEX_URL=...   a PyPI mirror (default https://pypi.org/simple)
#   --secret id=ca_bundle,src=FILE  a PEM bundle pip trusts, e.g. a TLS-intercepting proxy's CA
#                                   (`make image CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt`)
# RUN --mount needs BuildKit (docker's default builder) or podman/buildah; no `# syntax=` line, so
# no frontend image is pulled from a registry.
# Both targets run /opt/venv as the non-root user `neutreno` (uid 10001), serving
# /app/model_repository on NEUTRENO_PORT (8000); the HEALTHCHECK is readiness (/readyz). The
# gpu target's NVIDIA driver comes from the host (nvidia-container-toolkit); the CUDA libraries
# are the PyPI wheels inside the venv.

ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
# runtime: Debian's python3 and the service user; the base of the builder and of both targets
FROM ${BASE_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 neutreno \
    && useradd --system --uid 10001 --gid neutreno --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin neutreno

# ---------------------------------------------------------------------------------------------
# deps-cpu: a venv with the `serve` extra's third-party packages (never `train`: no torch), read
# from pyproject.toml; cached until pyproject.toml changes. pip runs from Debian's pip wheel
# (/opt/pip.whl) so that the images carry no pip. The test suites of numpy and onnx (35 MB) go,
# and the extension modules lose their symbol tables (20 MB; the wheels' vendored *.libs stay as
# auditwheel wrote them).
FROM runtime AS deps-cpu
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_INDEX_URL=${PIP_INDEX_URL} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv=3.11.2-1+b1 binutils=2.40-2 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv --without-pip /opt/venv \
    && ln -s /usr/share/python-wheels/pip-*.whl /opt/pip.whl
WORKDIR /src
COPY pyproject.toml ./
# huggingface_hub and hf_xet (15 MB) come with tokenizers for downloads from a hub; the service
# reads each bundle's tokenizer.json from disk (Tokenizer.from_file), so they are removed.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
open("requirements.txt", "w").write("\n".join(p["dependencies"] + p["optional-dependencies"]["serve"])); \
open("requirements-gpu.txt", "w").write("\n".join(p["optional-dependencies"]["gpu"]))' \
    && /opt/venv/bin/python /opt/pip.whl/pip install -r requirements.txt \
    && /opt/venv/bin/python /opt/pip.whl/pip uninstall -y -q huggingface_hub hf_xet \
    && site=/opt/venv/lib/python3.11/site-packages \
    && find "$site/numpy" -depth -type d -name tests -exec rm -rf {} + \
    && rm -rf "$site/onnx/backend/test" \
    && find "$site" -name '*.libs' -prune -o -type f -name '*.so' -exec strip --strip-unneeded {} + \
    && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then echo "torch must not be installed" >&2; exit 1; fi

# deps-gpu: onnxruntime-gpu with its CUDA / cuDNN wheels (pyproject's `gpu` extra) replaces the CPU
# wheel; both own the `onnxruntime` package directory, so the CPU wheel goes first
FROM deps-cpu AS deps-gpu
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && /opt/venv/bin/python /opt/pip.whl/pip uninstall -y onnxruntime \
    && /opt/venv/bin/python /opt/pip.whl/pip install -r requirements-gpu.txt

# app: the project's serving packages (the CLI, service/, export/: torch-free) installed under
# /app-install with the venv's layout, copied over /opt/venv by the targets; models/ and training/
# (PyTorch) and bench/ stay out of the image
FROM deps-cpu AS app
COPY README.md ./
COPY neutreno/ neutreno/
COPY service/ service/
COPY export/ export/
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && /opt/venv/bin/python /opt/pip.whl/pip install --no-deps --no-compile --prefix /app-install .

# ---------------------------------------------------------------------------------------------
# cpu: Debian's python3 + the CPU venv
FROM runtime AS cpu
LABEL org.opencontainers.image.title="neutreno-serve" \
      org.opencontainers.image.description="NeuTRENO models on ONNX Runtime (CPU)" \
      org.opencontainers.image.licenses="MIT"
COPY --from=deps-cpu /opt/venv /opt/venv
COPY --from=app /app-install /opt/venv
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
HEALTHCHECK --interval=5s --timeout=4s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ['NEUTRENO_PORT'], timeout=3)"]
STOPSIGNAL SIGTERM
CMD ["neutreno", "serve"]

# ---------------------------------------------------------------------------------------------
# gpu (default target, last): the same base + the GPU venv. ONNX Runtime dlopens the CUDA
# libraries by soname, so the wheels' lib folders go on LD_LIBRARY_PATH.
FROM runtime AS gpu
LABEL org.opencontainers.image.title="neutreno-serve" \
      org.opencontainers.image.description="NeuTRENO models on ONNX Runtime (CUDA 13, cuDNN 9)" \
      org.opencontainers.image.licenses="MIT"
COPY --from=deps-gpu /opt/venv /opt/venv
COPY --from=app /app-install /opt/venv
WORKDIR /app
COPY --chown=neutreno:neutreno model_repository/ /app/model_repository/
ENV PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
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
HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ['NEUTRENO_PORT'], timeout=3)"]
STOPSIGNAL SIGTERM
CMD ["neutreno", "serve"]
