#!/usr/bin/env python3
"""An example reelspool command engine: numpy only, no model, deterministic frames.

Each frame is the reference portrait, brightened by the loudness of the speech under that
frame, with a band that sweeps down the picture at a speed set by the loudness, and a little
seeded grain. Where the band is carries over from one clip to the next in the carry directory
(`state.npy`), so a clip depends on the clips before it the way a real model's does, and a job
resumed from a checkpoint must be handed the right carry to come out identical.

Run it under reelspool by declaring it in the daemon config (README, "Bring your own model"):

    engines:
      numpy-example:
        command: [python3, /usr/share/reelspool/engines/python/example_engine.py]
        profile: example-engine
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import reelspool_engine  # noqa: E402


class Loaded:
    """What `load` hands to every `render_clip`."""

    def __init__(self, reference, audio):
        self.reference = reference
        self.audio = audio


def load(job):
    s = job.settings
    reference = np.frombuffer(job.inputs.reference_rgb(), dtype=np.uint8)
    if reference.size != s.width * s.height * 3:
        raise reelspool_engine.BadInput("reference image has %d bytes" % reference.size)
    audio = np.fromfile(job.inputs.audio_path, dtype="<f4")
    return Loaded(reference.reshape(s.height, s.width, 3).astype(np.float32), audio)


def loudness(audio, fps, frame):
    """RMS of the 16 kHz samples under output frame `frame` (0 past the end of the speech)."""
    start = frame * 16000 // fps
    window = audio[start : (frame + 1) * 16000 // fps]
    if window.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))


def render_clip(loaded, job, clip):
    s = job.settings
    if clip.carry_in is None:
        band = np.float64(0.0)
    else:
        band = np.load(os.path.join(clip.carry_in, "state.npy"))[0]
    rng = np.random.default_rng([s.seed, clip.index])
    rows = np.arange(s.height, dtype=np.float64)[:, None, None]
    frames = np.empty((clip.frames, s.height, s.width, 3), dtype=np.uint8)
    for i in range(clip.frames):
        level = loudness(loaded.audio, s.fps, clip.index * clip.frames + i)
        band = (band + 1.0 + 40.0 * level) % s.height
        near = np.exp(-0.5 * ((rows - band) / 3.0) ** 2)
        grain = rng.normal(0.0, 4.0, size=(s.height, s.width, 1))
        picture = loaded.reference * (0.7 + 0.6 * min(level * 4.0, 1.0)) + 60.0 * near + grain
        frames[i] = np.clip(np.rint(picture), 0, 255).astype(np.uint8)
        clip.progress(step=i + 1, total=clip.frames)
    np.save(os.path.join(clip.carry_out, "state.npy"), np.array([band], dtype=np.float64))
    return frames


if __name__ == "__main__":
    reelspool_engine.run(load, render_clip, name="numpy-example")
