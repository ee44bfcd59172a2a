FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements.txt .
# psycopg: compose runs PostgreSQL; local clusters use SQLite and do not need it.
RUN pip install --no-cache-dir -r requirements.txt "psycopg[binary]==3.3.9"
COPY . .
EXPOSE 8000
CMD ["python", "-m", "realtime.serve", "-b", "0.0.0.0", "-p", "8000", "--proxy-headers", \
     "--websocket_timeout", "-1", "project.asgi:application"]
