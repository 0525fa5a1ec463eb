"""A service as a team writes it: a Flask app that knows nothing of ship. Run under gunicorn
(`gunicorn -w 2 app:app`); ship gives it the host's socket and its release in SHIP_SHA."""

import os

from flask import Flask

app = Flask(__name__)
SHA = os.environ.get("SHIP_SHA", "dev")


@app.get("/healthz")
def healthz():
    return "ok"


@app.get("/")
def hello():
    return f"hello from {SHA[:7]}\n", 200, {"X-Release": SHA}
