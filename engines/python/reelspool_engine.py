"""Write a reelspool command engine in two functions.

reelspool's worker drives an engine process over JSON lines on its stdin/stdout
(docs/engine-protocol.md, protocol version 1). This module speaks that protocol, so an engine
author writes only:

    def load(job):                   # once: read job.model, job.settings, job.inputs ...
        return model                 # anything; handed back to every render_clip call

    def render_clip(model, job, clip):
        ...                          # read clip.carry_in (None for clip 0), write clip.carry_out
        return frames                # clip.frames x height x width x 3 uint8 (bytes-like)

    if __name__ == "__main__":
        reelspool_engine.run(load, render_clip, name="my-engine")

Standard library only. Raise `OutOfMemory` (or let torch raise its OutOfMemoryError) and the
daemon retries the job with offload; raise `BadInput` for a job that cannot work with this
engine; any other exception is reported as `internal`. Log with `print()` or `logging` as you
like: this module moves the process's stdout to stderr (the job's worker log), so nothing but
protocol lines ever reaches the worker.
"""

import json
import os
import sys
import threading
import traceback

PROTOCOL_VERSION = 1

# The protocol stream of a running engine (tests use it to send deliberately bad lines).
_active_channel = None


class EngineError(Exception):
    """An error the engine reports to the worker; `kind` is the protocol's error kind."""

    kind = "internal"


class OutOfMemory(EngineError):
    """The model did not fit: the daemon retries with `job.device.offload` set."""

    kind = "oom"


class BadInput(EngineError):
    """The job's inputs or settings cannot work with this engine: no retry."""

    kind = "bad_input"


class _Channel:
    """The protocol stream: the process's real stdout, one locked line per message."""

    def __init__(self):
        self._out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
        # Everything else written to fd 1 (print, C libraries) now lands on stderr.
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self._lock = threading.Lock()

    def send(self, message):
        line = json.dumps(message, separators=(",", ":"))
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def write_raw(self, text):
        """Writes text as is (for tests of the worker's handling of bad lines)."""
        with self._lock:
            self._out.write(text)
            self._out.flush()


class _Settings:
    def __init__(self, raw):
        self.width = raw["width"]
        self.height = raw["height"]
        self.infer_frames = raw["infer_frames"]
        self.sample_steps = raw["sample_steps"]
        self.guide_scale = raw["guide_scale"]
        self.seed = raw["seed"]
        self.fps = raw["fps"]
        self.clips = raw["clips"]


class _Inputs:
    def __init__(self, raw):
        self.image = raw["image"]
        self.audio = raw["audio"]
        self.prompt = raw["prompt"]
        self.reference_rgb_path = raw["reference_rgb"]
        self.audio_path = raw["audio_f32le_16k"]
        self.audio_samples = raw["audio_samples"]

    def reference_rgb(self):
        """The reference image at the output size: height x width x 3 bytes, row-major."""
        with open(self.reference_rgb_path, "rb") as f:
            return f.read()

    def audio_16k(self):
        """The speech track as a list-like array('f') of mono 16 kHz samples."""
        import array

        samples = array.array("f")
        with open(self.audio_path, "rb") as f:
            samples.frombytes(f.read())
        if sys.byteorder != "little":
            samples.byteswap()
        return samples


class _Device:
    def __init__(self, raw):
        self.cuda_visible_devices = raw.get("cuda_visible_devices")
        self.offload = raw.get("offload", False)


class Job:
    """What `load` receives: the job's model, settings, inputs and device."""

    def __init__(self, raw):
        self.model = raw["model"]
        self.settings = _Settings(raw["settings"])
        self.inputs = _Inputs(raw["inputs"])
        self.device = _Device(raw["device"])
        self.scratch_dir = raw["scratch_dir"]
        self.heartbeat_timeout_secs = raw.get("heartbeat_timeout_secs", 120)

    @property
    def frame_bytes(self):
        return self.settings.width * self.settings.height * 3


class Clip:
    """One `render_clip` request."""

    def __init__(self, raw, channel):
        self.index = raw["index"]
        self.frames = raw["frames"]
        self.carry_in = raw.get("carry_in")
        self.carry_out = raw["carry_out"]
        self.frames_path = raw["frames_path"]
        self._channel = channel

    def progress(self, step=None, total=None, message=None):
        """Tells the worker the clip is moving; call it at least every heartbeat timeout."""
        line = {"type": "progress"}
        if step is not None:
            line["step"] = step
        if total is not None:
            line["total"] = total
        if message is not None:
            line["message"] = message
        self._channel.send(line)


def _is_out_of_memory(error):
    # torch.cuda.OutOfMemoryError / torch.OutOfMemoryError, without importing torch here.
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"


def _error_reply(error):
    if isinstance(error, EngineError):
        kind = error.kind
    elif _is_out_of_memory(error):
        kind = "oom"
    else:
        kind = "internal"
    traceback.print_exc(file=sys.stderr)
    message = str(error) or type(error).__name__
    return {"type": "error", "kind": kind, "message": message}


class _Beat:
    """Heartbeats from a thread while `load` runs (loading a model has no natural steps)."""

    def __init__(self, channel, every_secs):
        self._channel = channel
        self._every = every_secs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self._every):
            self._channel.send({"type": "heartbeat"})

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _write_frames(path, frames, frame_bytes):
    """Writes what render_clip returned; returns the frame count it holds."""
    if frames is None:
        size = os.path.getsize(path)
        return size // frame_bytes if frame_bytes else 0
    data = memoryview(frames).cast("B") if not isinstance(frames, (bytes, bytearray)) else frames
    if len(data) % frame_bytes:
        raise EngineError(
            "render_clip returned %d bytes, not a whole number of %d-byte frames"
            % (len(data), frame_bytes)
        )
    with open(path, "wb") as f:
        f.write(data)
    return len(data) // frame_bytes


def run(load, render_clip, name=None, capabilities=()):
    """Serves the protocol until `shutdown` or the end of stdin; never returns normally.

    `render_clip` returns the clip's frames (bytes, bytearray, memoryview or a contiguous
    uint8 numpy array), or None after writing `clip.frames_path` itself.
    """
    global _active_channel
    channel = _active_channel = _Channel()
    channel.send(
        {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "engine": name,
            "capabilities": list(capabilities),
        }
    )
    model = None
    job = None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            kind = request["type"]
        except (ValueError, KeyError, TypeError):
            channel.send(
                {"type": "error", "kind": "internal", "message": "unreadable request: %r" % line[:200]}
            )
            continue
        if kind == "shutdown":
            print("reelspool_engine: shutdown requested; exiting", file=sys.stderr, flush=True)
            break
        try:
            if kind == "load":
                if request.get("protocol") != PROTOCOL_VERSION:
                    raise EngineError("worker speaks protocol %r" % request.get("protocol"))
                job = Job(request)
                # Four beats per timeout: one late beat never costs the job.
                with _Beat(channel, max(job.heartbeat_timeout_secs / 4.0, 0.05)):
                    model = load(job)
                channel.send({"type": "ok"})
            elif kind == "render_clip":
                if job is None:
                    raise EngineError("render_clip before load")
                clip = Clip(request, channel)
                frames = render_clip(model, job, clip)
                count = _write_frames(clip.frames_path, frames, job.frame_bytes)
                channel.send({"type": "ok", "frames": count})
            else:
                raise EngineError("unknown request type %r" % kind)
        except Exception as error:  # reported to the worker, which decides what happens
            channel.send(_error_reply(error))
    sys.stderr.flush()
    sys.exit(0)
