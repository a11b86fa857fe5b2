# The embstream worker and lookup API. torch comes from the CPU wheel index, so the image
# does not carry a multi-GB CUDA build.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY models ./models
COPY store ./store
RUN pip install --no-cache-dir .
ENV EMBSTREAM_DATA_DIR=/var/lib/embstream/data \
    EMBSTREAM_REGISTRY=/var/lib/embstream/registry \
    EMBSTREAM_API_HOST=0.0.0.0
EXPOSE 8080
ENTRYPOINT ["embstream"]
CMD ["run"]
