#!/usr/bin/env python3
"""Writes COUNT small, valid WAV files (8 kHz mono 16-bit PCM, 0.5-2 s of a tone with some
noise) under DIR, for the demo, the tests and the benchmarks. Standard library only.

The output is deterministic for a given COUNT and --seed: file i always has the same path
and the same samples. About one file in ten lies directly in DIR (call-00007.wav); the rest
lie in day/agent sub-folders (2026-11-27/agent-3/call-00042.wav).
"""

import argparse
import array
import json
import math
import os
import sys
import wave

RATE = 8000


def rel_path(i):
    """The path of file i (0-based), relative to DIR."""
    name = "call-%05d.wav" % (i + 1)
    if i % 10 == 9:
        return name
    day = "2026-11-%02d" % (25 + i % 3)
    agent = "agent-%d" % (1 + (i // 3) % 8)
    return "%s/%s/%s" % (day, agent, name)


PERIOD = RATE // 10  # every tone is a multiple of 10 Hz, so it repeats every 800 samples
FADE = 80  # 10 ms fade in and out, so the tone does not click
_BLOCKS = {}


def _block(freq, seed):
    """One PERIOD of the tone at freq plus deterministic noise (an LCG), cached."""
    key = (freq, seed)
    block = _BLOCKS.get(key)
    if block is None:
        state = (seed * 2654435761 + freq * 40503 + 1) & 0xFFFFFFFF
        step = 2.0 * math.pi * freq / RATE
        values = []
        for k in range(PERIOD):
            state = (state * 1664525 + 1013904223) & 0xFFFFFFFF
            noise = ((state >> 16) & 0xFFF) - 2048
            values.append(int(9000.0 * math.sin(step * k)) + noise)
        block = array.array("h", values)
        _BLOCKS[key] = block
    return block


def samples(i, seed):
    """16-bit little-endian PCM for file i: 0.5 .. 2 s of a 200 .. 790 Hz tone with noise."""
    duration_ms = 500 + ((i * 7919 + seed * 104729) % 1501)
    n = RATE * duration_ms // 1000
    freq = 200 + ((i * 37 + seed) % 60) * 10
    block = _block(freq, seed)
    start = (i * 131) % PERIOD
    pcm = (block * (n // PERIOD + 2))[start:start + n]
    for k in range(min(FADE, n)):
        pcm[k] = pcm[k] * k // FADE
        pcm[n - 1 - k] = pcm[n - 1 - k] * k // FADE
    if sys.byteorder == "big":
        pcm.byteswap()
    return pcm.tobytes()


def write_wav(path, pcm):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with wave.open(tmp, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    os.replace(tmp, path)


def main(argv):
    ap = argparse.ArgumentParser(
        description="Write COUNT small valid WAV files (8 kHz mono 16-bit PCM) under DIR.")
    ap.add_argument("dir", metavar="DIR", help="output folder (created if missing)")
    ap.add_argument("count", metavar="COUNT", type=int, help="number of files")
    ap.add_argument("--json", action="store_true",
                    help="print the relative paths as a JSON array on stdout")
    ap.add_argument("--seed", type=int, default=1, help="varies the audio (default 1)")
    args = ap.parse_args(argv)
    if args.count < 0:
        ap.error("COUNT must be >= 0")

    paths = []
    for i in range(args.count):
        rel = rel_path(i)
        write_wav(os.path.join(args.dir, rel), samples(i, args.seed))
        paths.append(rel)
    if args.json:
        json.dump(paths, sys.stdout)
        sys.stdout.write("\n")
    else:
        print("wrote %d WAV files under %s" % (len(paths), args.dir), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
