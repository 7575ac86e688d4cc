#!/usr/bin/env python3
"""A command engine that reports progress inside its first clip and then sleeps there for ten
minutes: what a stop inside a long clip has to interrupt."""

import json
import sys
import time


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


send({"type": "hello", "protocol": 1, "engine": "sleepy", "capabilities": []})
for line in sys.stdin:
    request = json.loads(line)
    if request["type"] == "shutdown":
        break
    if request["type"] == "load":
        send({"type": "ok"})
    elif request["type"] == "render_clip":
        send({"type": "progress", "step": 1, "total": 4, "message": "denoising"})
        time.sleep(600)
        send({"type": "error", "kind": "internal", "message": "slept through"})
