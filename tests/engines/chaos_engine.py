#!/usr/bin/env python3
"""The example engine with faults on order, for tests/engines.rs.

CHAOS (from the engine's `env:` in the test daemon's config) lists faults, comma-separated:
  kill@load        SIGKILL itself while loading
  kill@mid:K       SIGKILL itself halfway through clip K's frames
  kill@frames:K    SIGKILL itself after writing clip K's frames, before replying
  crash@K          exit with status 3 at the start of clip K
  hang@K           stop answering at the start of clip K
  hang-once@K      like hang@K, but only in the first attempt that reaches clip K
  garbage@K        print a line that is not a message at the start of clip K
  short@K          return one frame too few for clip K
  badsize@K        write clip K's frames file one byte too long (and claim the full count)
  oom              report `oom` from load unless the lease asked for offload
  slow             sleep 0.15 s before each clip (frames unchanged)
Kills and hang-once fire once per job (a marker file in CHAOS_MARKS, by default the working directory, which
is the job's engine scratch directory, remembers), so the retried attempt runs past them; the
other faults fire every time.
"""

import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "engines", "python"))

import example_engine  # noqa: E402
import reelspool_engine  # noqa: E402

FAULTS = [f for f in os.environ.get("CHAOS", "").split(",") if f]
MARKS = os.environ.get("CHAOS_MARKS") or os.getcwd()


def first_time(point):
    """True the first time a job reaches `point` (remembered by a marker file)."""
    marker = os.path.join(MARKS, point.replace(":", "-").replace("@", "-"))
    if os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True


def kill_once(point):
    if point not in FAULTS or not first_time(point):
        return
    print("chaos: SIGKILL at %s" % point, file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def load(job):
    kill_once("kill@load")
    if "oom" in FAULTS and not job.device.offload:
        raise reelspool_engine.OutOfMemory("chaos: CUDA out of memory (pretend)")
    return example_engine.load(job)


def render_clip(loaded, job, clip):
    k = clip.index
    if "slow" in FAULTS:
        time.sleep(0.15)
    if "crash@%d" % k in FAULTS:
        print("chaos: crashing at clip %d" % k, file=sys.stderr, flush=True)
        os._exit(3)
    if "hang@%d" % k in FAULTS:
        time.sleep(3600)
    if "hang-once@%d" % k in FAULTS and first_time("hang-once@%d" % k):
        time.sleep(3600)
    if "garbage@%d" % k in FAULTS:
        reelspool_engine._active_channel.write_raw("100%|##########| 4/4 [00:01<00:00]\n")
    if "kill@mid:%d" % k in FAULTS:
        real_progress = clip.progress

        def progress(step=None, total=None, message=None):
            real_progress(step, total, message)
            if step is not None and total is not None and step * 2 >= total:
                kill_once("kill@mid:%d" % k)

        clip.progress = progress
    frames = example_engine.render_clip(loaded, job, clip)
    if "short@%d" % k in FAULTS:
        frames = frames[:-1]
    if "badsize@%d" % k in FAULTS:
        with open(clip.frames_path, "wb") as f:
            f.write(frames.tobytes() + b"\0")
        return None  # the helper counts whole frames in the file: all of them
    if "kill@frames:%d" % k in FAULTS:
        with open(clip.frames_path, "wb") as f:
            f.write(frames.tobytes())
        kill_once("kill@frames:%d" % k)
    return frames


if __name__ == "__main__":
    reelspool_engine.run(load, render_clip, name="chaos")
