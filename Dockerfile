# radar-ad's HTTP service (`radar serve`) in a container.
#
# CPU (the default):
#   docker build -t radar-ad .
#   docker run --rm -p 8000:8000 -v /path/to/model:/models/model:ro radar-ad
#   docker run --rm -p 8000:8000 -v /path/to/model:/models/model:ro radar-ad /models/model --workers 2
# CUDA (PyTorch's CUDA wheels bring their own CUDA libraries: the host needs
# the NVIDIA driver and the NVIDIA Container Toolkit, not a CUDA base image;
# pick an index that carries TORCH_VERSION, or set TORCH_VERSION too):
#   docker build -t radar-ad:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
#   docker run --rm --gpus all -p 8000:8000 -v /path/to/model:/models/model:ro radar-ad:cuda
#
# The arguments after the image name replace CMD: the model (a directory from
# `radar train`, or an .onnx file, mounted under /models) and any other
# `radar serve` option. Keep the port 8000 inside the container (the health
# check asks it) and map it with -p.
FROM python:3.12-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The README's install, in two layers: PyTorch first (large, rarely changes),
# then the package with the service and ONNX Runtime.
RUN pip install --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[serve,onnx]" && rm -rf /src

RUN useradd --create-home --uid 10001 radar
USER radar
WORKDIR /home/radar

EXPOSE 8000
# Readiness, not mere liveness: healthy once the answering worker's model is
# loaded (503 before, and urlopen raises on it). No curl in the slim image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]

# Options before the model argument, so that CMD (or `docker run IMAGE ...`)
# can name another model and add options (--workers 2) without losing these.
ENTRYPOINT ["radar", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["/models/model"]
