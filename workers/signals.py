"""Worker-side signal handlers and boot steps."""
from workers.celery_app import app
from workers.heartbeat import Heartbeat

app.steps["worker"].add(Heartbeat)
