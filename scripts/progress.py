#!/usr/bin/env python3
"""Follows one cofi batch until it ends, drawing a progress bar per stage.

Polls GET {url}/batches/{id} every 0.3 s. On a terminal it redraws 8 lines in place (the
batch line, then one per stage: done as a full block, failed in red, skipped as '-',
running as a shaded block); otherwise it prints one compact line every 2 s. At the end it
prints the final counts per stage and the elapsed time. Standard library only.

Exit status: 0 batch completed, 3 completed_with_errors or cancelled, 1 cofid unreachable
for too long or --timeout reached, 2 bad usage.
"""

import argparse
import datetime
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request

FINAL = ("completed", "completed_with_errors", "cancelled")
WIDTH = 40
RED = "\x1b[31m"
DIM = "\x1b[2m"
RESET = "\x1b[0m"


def fetch(url, timeout):
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def parse_time(text):
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def count(stage, key):
    value = stage.get(key)
    return value if isinstance(value, int) else 0


def bar(stage, total, color, width=WIDTH):
    """width cells: done, failed, skipped, running, then pending."""
    parts = [
        (count(stage, "done"), "\u2588", ""),
        (count(stage, "failed"), "\u2588" if color else "x", RED),
        (count(stage, "skipped"), "-", DIM),
        (count(stage, "running"), "\u2592", ""),
    ]
    out = []
    cum = 0
    cells_used = 0
    for n, ch, code in parts:
        cum += n
        upto = min(width, (cum * width) // total) if total > 0 else 0
        cells = upto - cells_used
        if cells > 0:
            text = ch * cells
            out.append(code + text + RESET if (color and code) else text)
            cells_used = upto
    rest = width - cells_used
    if rest > 0:
        out.append(("\u00b7" if color else ".") * rest)
    return "".join(out)


def fmt_seconds(s):
    if s is None:
        return "-"
    s = int(round(s))
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % (s // 60, s % 60)
    return "%dh%02dm" % (s // 3600, (s % 3600) // 60)


def stage_line(stage, total, color, width=WIDTH):
    done = count(stage, "done")
    failed = count(stage, "failed")
    skipped = count(stage, "skipped")
    running = count(stage, "running")
    ended = done + failed + skipped
    pct = 100.0 * ended / total if total > 0 else 100.0
    return "%-10s %s %5d/%-5d run %-4d fail %-4d %5.1f%%" % (
        stage.get("name", "?"), bar(stage, total, color, width), done, total, running, failed, pct)


def head_line(batch, elapsed):
    eta = batch.get("eta_seconds")
    eta_text = fmt_seconds(eta) if isinstance(eta, (int, float)) else "-"
    return "batch %s %-21s %d files   elapsed %-7s eta %s" % (
        batch.get("id"), batch.get("state", "?"), batch.get("file_count", 0),
        fmt_seconds(elapsed), eta_text)


def compact_line(batch, elapsed):
    total = batch.get("file_count", 0)
    parts = []
    for st in batch.get("stages", []):
        text = "%s %d/%d" % (st.get("name", "?"), count(st, "done"), total)
        if count(st, "failed"):
            text += " (%d failed)" % count(st, "failed")
        parts.append(text)
    eta = batch.get("eta_seconds")
    return "[%7.1fs] %s | %s | eta %s" % (
        elapsed, batch.get("state", "?"), ", ".join(parts),
        fmt_seconds(eta) if isinstance(eta, (int, float)) else "-")


class Screen:
    """Redraws a block of lines in place on a terminal."""

    def __init__(self, out):
        self.out = out
        self.lines = 0

    def draw(self, lines):
        buf = []
        if self.lines:
            buf.append("\x1b[%dF" % self.lines)  # to the start of the first line drawn
        for line in lines:
            buf.append("\x1b[2K" + line + "\n")
        self.out.write("".join(buf))
        self.out.flush()
        self.lines = len(lines)


def main(argv):
    ap = argparse.ArgumentParser(description="Follow a cofi batch until it ends.")
    ap.add_argument("url", help="cofid's base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("batch_id", help="the batch id")
    ap.add_argument("--interval", type=float, default=0.3, help="poll period in s (0.3)")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="give up after this many seconds (1800)")
    ap.add_argument("--no-tty", action="store_true", help="compact lines even on a terminal")
    args = ap.parse_args(argv)

    url = "%s/batches/%s" % (args.url.rstrip("/"), args.batch_id)
    tty = sys.stdout.isatty() and not args.no_tty and os.environ.get("TERM") != "dumb"
    screen = Screen(sys.stdout)
    start = time.monotonic()
    last_ok = start
    last_compact = 0.0
    batch = None
    error = None
    if tty:
        sys.stdout.write("\x1b[?25l")  # hide the cursor while redrawing
    try:
        while True:
            now = time.monotonic()
            try:
                batch = fetch(url, timeout=5)
                last_ok = now
                error = None
            except (urllib.error.URLError, OSError, ValueError) as e:
                error = str(e)
                if now - last_ok > 15:
                    print("\ncofid has not answered for 15 s: %s" % error, file=sys.stderr)
                    return 1
            if batch is not None:
                elapsed = now - start
                if tty:
                    total = batch.get("file_count", 0)
                    # Lines must not wrap, or the redraw in place goes wrong.
                    cols = shutil.get_terminal_size((100, 24)).columns
                    width = max(5, min(WIDTH, cols - 50))
                    head = head_line(batch, elapsed) + (("   (" + error + ")") if error else "")
                    lines = [head[:cols - 1]]
                    lines += [stage_line(st, total, True, width)
                              for st in batch.get("stages", [])]
                    screen.draw(lines)
                elif now - last_compact >= 2.0 or batch.get("state") in FINAL:
                    print(compact_line(batch, elapsed), flush=True)
                    last_compact = now
                if batch.get("state") in FINAL:
                    break
            if now - start > args.timeout:
                print("gave up after %.0f s" % args.timeout, file=sys.stderr)
                return 1
            time.sleep(args.interval)
    except KeyboardInterrupt:
        print("\ninterrupted; the batch goes on in cofid", file=sys.stderr)
        return 130
    finally:
        if tty:
            sys.stdout.write("\x1b[?25h")
            sys.stdout.flush()

    # Final summary.
    total = batch.get("file_count", 0)
    started = parse_time(batch.get("started_at"))
    finished = parse_time(batch.get("finished_at"))
    if started and finished:
        took = (finished - started).total_seconds()
    else:
        took = time.monotonic() - start
    print()
    print("batch %s: %s, %d files, %.1f s (%.1f calls/s)" % (
        batch.get("id"), batch.get("state"), total, took, total / took if took > 0 else 0.0))
    print("%-10s %7s %7s %7s %7s" % ("stage", "done", "failed", "skipped", "pending"))
    for st in batch.get("stages", []):
        print("%-10s %7d %7d %7d %7d" % (st.get("name", "?"), count(st, "done"),
                                         count(st, "failed"), count(st, "skipped"),
                                         count(st, "pending") + count(st, "running")))
    return 0 if batch.get("state") == "completed" else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
