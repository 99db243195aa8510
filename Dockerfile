FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY src ./src
RUN pip install --no-cache-dir . && useradd --system --uid 10001 tracker
USER tracker
EXPOSE 8000
CMD ["status-tracker", "serve", "--host", "0.0.0.0", "--port", "8000"]
