FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements.txt .
# requirements.txt brings psycopg and its pool: compose runs PostgreSQL.
RUN pip install --no-cache-dir -r requirements.txt
# The server runs as an unprivileged user: the code stays root's, read-only to it, and only
# var/ (a SQLite file or a generated secret key, when those are used) is its to write.
RUN groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin switchboard
COPY . .
RUN mkdir -p /app/var && chown switchboard:switchboard /app/var && chmod 700 /app/var
# By number, so a platform that refuses root images (runAsNonRoot) can tell without /etc/passwd.
USER 10001:10001
EXPOSE 8000
CMD ["python", "-m", "realtime.serve", "-b", "0.0.0.0", "-p", "8000", "--proxy-headers", \
     "--websocket_timeout", "-1", "project.asgi:application"]
