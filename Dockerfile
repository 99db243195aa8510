FROM python:3.11-slim
# The default command runs `serve` alone: on its embedded PostgreSQL, which needs the server
# binaries, and with the built-in simulator while no Twilio credentials are set.
# docker-compose.yml runs a PostgreSQL container instead and sets DATABASE_URL.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY src ./src
# The data directory (embedded cluster, generated API key, simulator state) is the only place the
# service writes: owned by its user, kept in a volume.
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /var/lib/status-tracker tracker \
    && install -d -o tracker -g tracker -m 700 /var/lib/status-tracker
ENV STATUS_TRACKER_DATA_DIR=/var/lib/status-tracker
VOLUME /var/lib/status-tracker
USER tracker
EXPOSE 8000
CMD ["status-tracker", "serve", "--host", "0.0.0.0", "--port", "8000"]
