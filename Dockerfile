# The rowembed image for docker-compose.yml: CLI, worker and dispatcher.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY rowembed rowembed
COPY pgplugin pgplugin
COPY migrations migrations
COPY workers workers
# PyPI's default torch wheel for Linux is the CUDA build the GPU workers need.
RUN pip install --no-cache-dir torch && pip install --no-cache-dir .
ENTRYPOINT ["rowembed"]
