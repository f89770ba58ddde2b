# One image for every long-running stage (reader, processor, sync, simulator) and, with the
# Lambda runtime interface client, for the stream processor on AWS Lambda.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY change_events ./change_events
COPY cdc_reader ./cdc_reader
COPY stream_processors ./stream_processors
COPY lake ./lake
COPY warehouse_sync ./warehouse_sync
COPY totesys ./totesys
COPY totes_cli ./totes_cli
COPY local_stack ./local_stack
# awslambdaric: the runtime interface client that lets Lambda run the processor's handler
# (`python -m awslambdaric stream_processors.handler.handler`).
RUN pip install --no-cache-dir -c constraints.txt . awslambdaric==4.2.2 \
    && useradd --system --no-create-home totes \
    && mkdir -p /state /warehouse && chown totes /state /warehouse  # volumes in docker-compose.yml
USER totes
ENTRYPOINT []
CMD ["totes", "--help"]
