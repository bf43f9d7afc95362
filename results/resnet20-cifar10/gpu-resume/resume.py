"""Go on with one run (--resume) until DEADLINE; compiled, falling back to eager if compiling fails
or stalls. Brings back last.pt, log.jsonl, config.yaml and model.safetensors when finished."""
import json, os, shutil, subprocess, sys, time

OUT = os.environ["OUT"]
DEADLINE = float(os.environ["DEADLINE"])
CONFIG = os.environ.get("CONFIG", "examples/resnet20-cifar10-sam-distill.yaml")
RUN = os.environ.get("RUN", "runs/resnet20-cifar10-sam-distill")
STALL = float(os.environ.get("STALL", "150"))   # seconds a compiled first epoch may take
log = open(os.path.join(OUT, "resume.log"), "a")


def say(*a):
    line = f"[{time.strftime('%H:%M:%S')}] " + " ".join(map(str, a))
    print(line, flush=True); log.write(line + "\n"); log.flush()


def epochs_done():
    try:
        return len(open(os.path.join(RUN, "log.jsonl")).read().splitlines())
    except OSError:
        return 0


def launch(compile_):
    cmd = [sys.executable, "-m", "smoothblock.cli", "train", "--config", CONFIG, "--resume", "--quiet",
           *(["--compile"] if compile_ else [])]
    say("launch", " ".join(cmd), "at epoch", epochs_done())
    return subprocess.Popen(cmd, stdout=open(os.path.join(OUT, f"train-{'compile' if compile_ else 'eager'}.log"), "w"),
                            stderr=subprocess.STDOUT)


start_epochs = epochs_done()
p, started, compile_ = launch(True), time.time(), True
while time.time() < DEADLINE:
    rc = p.poll()
    if rc is not None:
        say("train exited", rc, "at epoch", epochs_done())
        if rc != 0 and compile_:
            p, started, compile_ = launch(False), time.time(), False
            continue
        break
    if compile_ and epochs_done() == start_epochs and time.time() - started > STALL:
        say("compiled first epoch stalled; eager instead")
        p.kill(); p.wait()
        p, started, compile_ = launch(False), time.time(), False
    time.sleep(1)
if p.poll() is None:
    p.kill(); p.wait()
say("stopped at epoch", epochs_done(), "compile", compile_)
try:
    say("last", open(os.path.join(RUN, "log.jsonl")).read().splitlines()[-1])
except (OSError, IndexError):
    pass
for f in ("last.pt", "log.jsonl", "config.yaml", "model.safetensors"):
    if os.path.exists(os.path.join(RUN, f)):
        shutil.copy(os.path.join(RUN, f), os.path.join(OUT, f))
say("done")
