# Steward: the API with its in-process job worker and online learner.
#   docker build -t steward .
#   docker run -p 8000:8000 -v steward-data:/data steward      (SQLite + blobs in /data)
#   docker run -e STEWARD_WORKERS=2 …                            (2 API processes sharing the port)
# With PostgreSQL: docker compose up (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STEWARD_DATA_DIR=/data \
    STEWARD_PORT=8000

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/steward steward \
    && mkdir -p /data \
    && chown steward:steward /data

WORKDIR /srv/steward

# Dependencies first (a layer that survives code changes), then the project itself.
COPY pyproject.toml README.md alembic.ini ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-deps . && python -c "import app.cli, migrations"

USER steward
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STEWARD_PORT', '8000'), timeout=4)"

CMD ["steward", "serve", "--host", "0.0.0.0"]
