# The rowembed image for docker-compose.yml: CLI, worker, dispatcher and metrics.
# Lean: no rowembed[embedded] (the demo's PostgreSQL, Redis and bundled model).
FROM python:3.11-slim

# torch comes first, from TORCH_INDEX: PyPI's Linux wheel is the CUDA build the GPU
# workers need; `--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu`
# makes a CPU-only image (about 1.5 GB smaller).
ARG TORCH_INDEX=https://pypi.org/simple
ARG TORCH_VERSION=2.13.0
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"

# Runs as an unprivileged user; models download into its Hugging Face cache (a
# volume in docker-compose.yml), which it owns.
RUN useradd --create-home --uid 10001 rowembed \
    && mkdir -p /home/rowembed/.cache/huggingface /models/trained \
    && chown -R rowembed:rowembed /home/rowembed/.cache /models/trained
ENV HF_HOME=/home/rowembed/.cache/huggingface

WORKDIR /app
# The dependencies first, from pyproject.toml alone: a change to the source
# rebuilds only the layers below.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md LICENSE ./
COPY rowembed rowembed
COPY pgplugin pgplugin
COPY migrations migrations
COPY workers workers
RUN pip install --no-cache-dir --no-deps .

USER rowembed
ENTRYPOINT ["rowembed"]
