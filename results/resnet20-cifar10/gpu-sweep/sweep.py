"""Probe, then train several ResNet20s at once on one GPU, sized to end before a deadline."""
import json, os, subprocess, sys, tarfile, time

OUT = os.environ.get("OUT", "/tmp/out")
DEADLINE = float(os.environ["DEADLINE"])          # unix time by which training must stop
EXTRA = os.environ.get("EXTRA", "").split()        # e.g. --subset 2000 --device cpu for a dry run
CAP = int(os.environ.get("CAP", "300"))
COMPILE = os.environ.get("COMPILE", "0") == "1"
# {name: [smoothblock train arguments]}: a JSON file named by $RUNS (default: this folder's runs.json).
RUNS = json.load(open(os.environ.get("RUNS", os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs.json"))))
EPOCHS = int(os.environ.get("EPOCHS", "0"))        # > 0: no probe, every run gets this many epochs
RUN_ROOT = os.environ.get("RUN_ROOT", "runs")     # a dry run elsewhere never meets real runs
KEEP_STATE = os.environ.get("KEEP_STATE", "0") == "1"  # last.pt too (2 MB a run: the tool caps sizes)
log = open(os.path.join(OUT, "sweep.log"), "a")


def say(*a):
    line = f"[{time.strftime('%H:%M:%S')}] " + " ".join(map(str, a))
    print(line, flush=True)
    log.write(line + "\n"); log.flush()


def launch(name, args, epochs, out_dir, compile_):
    cmd = [sys.executable, "-m", "smoothblock.cli", "train", *args, "--epochs", str(epochs),
           "--out_dir", out_dir, "--quiet", *(["--compile"] if compile_ else []), *EXTRA]
    os.makedirs(os.path.join(OUT, "logs"), exist_ok=True)
    err = open(os.path.join(OUT, "logs", f"{os.path.basename(out_dir)}-{epochs}.log"), "w")
    return subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)


def history(out_dir):
    try:
        return [json.loads(l) for l in open(os.path.join(out_dir, "log.jsonl"))]
    except OSError:
        return []


def probe(compile_):
    started = time.time()
    procs = {n: launch(n, a, 3, f"/tmp/probe{int(compile_)}/{n}", compile_) for n, a in RUNS.items()}
    first_done = {}
    while any(p.poll() is None for p in procs.values()):
        for n in procs:
            if n not in first_done and history(f"/tmp/probe{int(compile_)}/{n}"):
                first_done[n] = time.time()
        time.sleep(0.5)
        if time.time() > DEADLINE - 200:
            for p in procs.values():
                p.kill()
            return None
    result = {}
    for n, p in procs.items():
        h = history(f"/tmp/probe{int(compile_)}/{n}")
        if p.returncode != 0 or len(h) < 3:
            say("probe", n, "failed, rc", p.returncode)
            return None
        t = sorted(e["seconds"] for e in h[1:])[-1]
        result[n] = {"epoch_s": t, "startup_s": first_done[n] - started - h[0]["seconds"],
                     "first_epoch_s": h[0]["seconds"], "val_acc": [e["val_acc"] for e in h]}
    say("probe", "compile" if compile_ else "eager", json.dumps(result))
    return result


procs, plan = {}, {}
compile_ = COMPILE
if EPOCHS > 0:
    plan = {n: EPOCHS for n in RUNS}
else:
    found = probe(compile_) if compile_ else None
    if found is None:
        compile_ = False
        found = probe(False)
    if found is None:
        with tarfile.open(os.path.join(OUT, "logs.tar"), "w") as tar:
            tar.add(os.path.join(OUT, "logs"), arcname="logs")
        sys.exit("both probes failed")
    json.dump({"compile": compile_, "probe": found}, open(os.path.join(OUT, "probe.json"), "w"), indent=1)
    for n in RUNS:
        left = DEADLINE - time.time() - found[n]["startup_s"] * (0.6 if compile_ else 1.0) - 15
        plan[n] = max(20, min(CAP, int(left / (found[n]["epoch_s"] * 1.06))))
for n, a in RUNS.items():
    procs[n] = launch(n, a, plan[n], f"{RUN_ROOT}/gpu-{n}", compile_)
say("plan", json.dumps(plan))
while any(p.poll() is None for p in procs.values()) and time.time() < DEADLINE:
    time.sleep(2)
for n, p in procs.items():
    if p.poll() is None:
        p.kill(); p.wait()
    h = history(f"{RUN_ROOT}/gpu-{n}")
    say(n, "rc", p.returncode, "epochs", len(h), "of", plan[n], "last", json.dumps(h[-1]) if h else "-")
with tarfile.open(os.path.join(OUT, "runs.tar"), "w") as tar:
    for n in RUNS:
        # A run cut by the deadline has no model.safetensors: its last.pt is what can go on.
        unfinished = not os.path.exists(f"{RUN_ROOT}/gpu-{n}/model.safetensors")
        for f in ("model.safetensors", "log.jsonl", "config.yaml") + (("last.pt",) if KEEP_STATE or unfinished else ()):
            path = f"{RUN_ROOT}/gpu-{n}/{f}"
            if os.path.exists(path):
                tar.add(path)
with tarfile.open(os.path.join(OUT, "logs.tar"), "w") as tar:
    tar.add(os.path.join(OUT, "logs"), arcname="logs")
say("done")
