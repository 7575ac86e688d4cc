#!/usr/bin/env python3
"""A command engine written from docs/engine-protocol.md alone: no helper module, no numpy.

Frame i of clip k is the reference image with its brightness shifted by a value drawn from a
generator seeded with (seed, k) plus a counter carried from clip to clip in `carry/count.txt`.
"""

import json
import os
import random
import sys

out = sys.stdout


def send(message):
    out.write(json.dumps(message) + "\n")
    out.flush()


send({"type": "hello", "protocol": 1, "engine": "plain", "capabilities": []})
settings = None
reference = None
for line in sys.stdin:
    request = json.loads(line)
    kind = request["type"]
    if kind == "shutdown":
        break
    if kind == "load":
        settings = request["settings"]
        with open(request["inputs"]["reference_rgb"], "rb") as f:
            reference = f.read()
        send({"type": "ok"})
    elif kind == "render_clip":
        count = 0
        if request["carry_in"] is not None:
            with open(os.path.join(request["carry_in"], "count.txt")) as f:
                count = int(f.read())
        rng = random.Random(settings["seed"] * 1000003 + request["index"])
        with open(request["frames_path"], "wb") as f:
            for i in range(request["frames"]):
                shift = (rng.randrange(64) + 7 * count) % 96
                f.write(bytes((b + shift) % 256 for b in reference))
                count += 1
                send({"type": "progress", "step": i + 1, "total": request["frames"]})
        with open(os.path.join(request["carry_out"], "count.txt"), "w") as f:
            f.write(str(count))
        send({"type": "ok", "frames": request["frames"]})
    else:
        send({"type": "error", "kind": "internal", "message": "unknown request " + kind})
