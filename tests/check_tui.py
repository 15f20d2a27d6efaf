#!/usr/bin/env python3
"""The terminal dashboard driven in tmux: a detached session of fixed size runs `--output-format tui`, keys
are sent (m, l, s, c, Ctrl+L, Ctrl+P), the pane is captured and the panel titles and contents checked;
q and Ctrl-C must leave with the terminal restored (alternate screen off, the dashboard gone, exit code
printed by the shell). With the real model, the views must switch while tokens are still being generated.
Without a terminal the dashboard refuses with exit 2. tmux is installed when missing (as root), else SKIP."""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from checklib import Tally  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--build", default="build")
ap.add_argument("--model", default="models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
args = ap.parse_args()
BIN = os.path.abspath(os.path.join(args.build, "metallic"))
_t = Tally()
report = _t.report
skip = _t.skip






def done():
    _t.summary()
    sys.exit(1 if _t.failed else 0)


tmp = tempfile.mkdtemp(prefix="check-tui-")
tiny = os.path.join(tmp, "tiny.gguf")
subprocess.run([sys.executable, "tools/gen_tiny_model.py", tiny, "--dtype", "f32", "--layers", "3", "--seed", "5"],
               capture_output=True, check=True)
env = {k: v for k, v in os.environ.items() if not k.startswith("METALLIC_")}

p = subprocess.run([BIN, "run", tiny, "hi", "--output-format", "tui"], capture_output=True, text=True, env=env,
                   stdin=subprocess.DEVNULL, timeout=60)
report("without a terminal: exit 2 saying so", p.returncode == 2 and "terminal" in p.stderr, p.stderr)

if not shutil.which("tmux") and os.geteuid() == 0 and shutil.which("apt-get"):
    subprocess.run(["apt-get", "install", "-y", "-qq", "tmux"], capture_output=True, timeout=300)
if not shutil.which("tmux"):
    skip("dashboard in tmux", "tmux is not installed (and cannot be installed here)")
    done()

SOCK = f"metallic-check-{os.getpid()}"


def tmux(*a):
    return subprocess.run(["tmux", "-L", SOCK] + list(a), capture_output=True, text=True, timeout=30)


def pane():
    return tmux("capture-pane", "-p", "-t", "t").stdout


def wait_for(pred, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        s = pane()
        if pred(s):
            return True, s
        time.sleep(0.1)
    return False, pane()


def start(cmd):
    tmux("kill-server")
    for _ in range(20):  # the previous server may still be shutting down
        # a shell that reports the exit code, then stays so the pane can be read
        r = tmux("new-session", "-d", "-s", "t", "-x", "140", "-y", "44", f"{cmd}; echo EXITED:$?; sleep 120")
        if r.returncode == 0 and tmux("has-session", "-t", "t").returncode == 0:
            return True
        time.sleep(0.25)
    return False


def alternate_on():
    return tmux("display", "-p", "-t", "t", "#{alternate_on}").stdout.strip()


try:
    # ---- every view and key, on the tiny model in latency mode ----
    cmd = (f"env METALLIC_ENABLE_PROFILING=1 {BIN} run {tiny} 'hello there' --output-format tui "
           f"--max-tokens 64 --backend legacy --temperature 0")
    report("tmux session starts", start(cmd))
    ok, s = wait_for(lambda s: "Generated Text" in s and "done (" in s)
    report("dashboard: text, prompt box, latency view, status bar", ok and "Prompt Tokens:" in s
           and "Pre-processing Time:" in s and "Generation Time:" in s and "Latency (l)" in s
           and "generation_loop" in s and "prompt_processing" in s and "block_0" in s and "tok/s" in s
           and "PROFILING ACTIVE" in s and alternate_on() == "1", s)
    tmux("send-keys", "-t", "t", "c")
    ok, s = wait_for(lambda s: "collapse depth 3" in s)
    report("c: one level deeper shows the ops of each block", ok and "sdpa" in s and "attn_q" in s, s)
    tmux("send-keys", "-t", "t", "m")
    ok, s = wait_for(lambda s: "Memory (m)" in s)
    report("m: memory view", ok and "Model file" in s and "Weights" in s and "KV cache" in s and "block 0" in s
           and "Host RSS" in s, s)
    tmux("send-keys", "-t", "t", "s")
    ok, s = wait_for(lambda s: "Stats (s)" in s)
    report("s: statistics view", ok and "hits" in s and "misses" in s and "evict" in s and "backend choices" in s
           and "attention=legacy" in s, s)
    tmux("send-keys", "-t", "t", "C-l")
    ok, s = wait_for(lambda s: "Logs (Ctrl+L)" in s)
    report("Ctrl+L: the event log", ok and '"event":"' in s, s)
    tmux("send-keys", "-t", "t", "C-l")
    ok, s = wait_for(lambda s: "Stats (s)" in s)
    report("Ctrl+L again: back to the view", ok, s)
    tmux("send-keys", "-t", "t", "C-p")
    ok, s = wait_for(lambda s: "PROFILING ACTIVE" not in s)
    report("Ctrl+P: latency mode off", ok, s)
    tmux("send-keys", "-t", "t", "C-p")
    ok, s = wait_for(lambda s: "PROFILING ACTIVE" in s)
    report("Ctrl+P: latency mode on again", ok, s)
    tmux("send-keys", "-t", "t", "l")
    ok, s = wait_for(lambda s: "Latency (l)" in s)
    report("l: back to the latency tree", ok, s)
    tmux("send-keys", "-t", "t", "q")
    ok, s = wait_for(lambda s: "EXITED:" in s)
    report("q: exit 0, terminal restored (alternate screen off, dashboard gone)",
           ok and "EXITED:0" in s and alternate_on() == "0" and "Generated Text" not in s, s + alternate_on())

    # ---- Ctrl-C, and responsiveness while generating (real model when present) ----
    real = os.path.exists(args.model)
    model = args.model if real else tiny
    cmd = (f"{os.path.abspath(BIN)} run {os.path.abspath(model)} 'Write a long story about a robot.' "
           f"--output-format tui --max-tokens 400 --ctx 1024")
    report("second tmux session starts", start(cmd))
    ok, s = wait_for(lambda s: "generating" in s or "done (" in s, timeout=120)
    report("second dashboard reaches generation", ok, s)
    if real:
        t0 = time.time()
        tmux("send-keys", "-t", "t", "m")
        ok, s = wait_for(lambda s: "Memory (m)" in s, timeout=5)
        dt = time.time() - t0
        report(f"view switches during generation ({dt:.2f} s)", ok and "generating" in s and dt < 2.0, s)
        ok, s = wait_for(lambda s: "tok/s" in s and " 0.0 tok/s" not in s, timeout=30)
        report("live tok/s in the status bar", ok, s)
    else:
        skip("view switches during generation", f"{args.model} absent")
    tmux("send-keys", "-t", "t", "C-c")
    ok, s = wait_for(lambda s: "EXITED:" in s, timeout=60)
    report("Ctrl-C: exit 130, terminal restored", ok and "EXITED:130" in s and alternate_on() == "0"
           and "Generated Text" not in s, s + alternate_on())
finally:
    tmux("kill-server")
    shutil.rmtree(tmp, ignore_errors=True)
done()
