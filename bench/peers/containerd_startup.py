"""The peer of bench/pods' startup phase: containerd + runc, the runtime
under Kubernetes, starting the same number of containers at the same rate
(`ctr run -d` of a busybox image, `sleep 3600`). Prints start latency and the
memory each container costs beside the app (PSS of its
containerd-shim-runc-v2), next to mast's figures given on the command line.

    python3 containerd_startup.py --pods 100 --rate 20 --mast-p50 31 --mast-p99 54 --mast-mem 2.8

Starts its own containerd on a private socket and state directory and
removes everything it started, even on failure.
"""
import argparse, os, shutil, signal, subprocess, sys, tempfile, time

def pss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0

def pct(xs, p):
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, int(len(xs) * p + 0.999999) - 1))]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--mast-p50", type=float)
    ap.add_argument("--mast-p99", type=float)
    ap.add_argument("--mast-mem", type=float)
    a = ap.parse_args()
    if not shutil.which("containerd") or not shutil.which("ctr"):
        print("containerd is not installed (apt-get install containerd runc): no peer figures")
        return
    d = tempfile.mkdtemp(prefix="mast-containerd-")
    sock = f"{d}/containerd.sock"
    with open(f"{d}/config.toml", "w") as f:
        f.write(f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n[grpc]\n  address = "{sock}"\n'
                '[plugins."io.containerd.grpc.v1.cri"]\n  disable_cgroup = true\n')
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, f"{here}/oci_busybox_image.py", f"{d}/bb.tar"], check=True)
    log = open(f"{d}/containerd.log", "w")
    daemon = subprocess.Popen(["containerd", "--config", f"{d}/config.toml"], stdout=log, stderr=log)
    ctr = ["ctr", "-a", sock]
    names = []
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        subprocess.run(ctr + ["images", "import", "--snapshotter", "native", f"{d}/bb.tar"], check=True, capture_output=True)
        lat = []
        start = time.monotonic()
        for i in range(a.pods):
            time.sleep(max(0.0, start + i / a.rate - time.monotonic()))
            name = f"peer-{i}"
            t0 = time.monotonic()
            subprocess.run(ctr + ["run", "-d", "--snapshotter", "native", "docker.io/library/bb:latest", name, "sleep", "3600"],
                           check=True, capture_output=True)
            lat.append((time.monotonic() - t0) * 1000)
            names.append(name)
        shims = [int(p) for p in os.listdir("/proc") if p.isdigit()
                 and open(f"/proc/{p}/cmdline", "rb").read().startswith(b"/usr/bin/containerd-shim-runc-v2")
                 and sock.encode() in open(f"/proc/{p}/cmdline", "rb").read()]
        mem = sum(pss_mb(p) for p in shims) / max(1, len(names))
        p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
        print()
        print(f"{'measure':<46} {'mast':>8} {'containerd':>11} {'ratio':>7}")
        def row(name, m, c, unit):
            r = f"{m / c:.2f}x" if m is not None and c else "-"
            ms = f"{m:.1f}" if m is not None else "-"
            print(f"{name:<46} {ms:>8} {c:>11.1f} {r:>7}  {unit}")
        row("start latency p50", a.mast_p50, p50, "ms (mast: create → Ready via the API; containerd: `ctr run -d` returns)")
        row("start latency p99", a.mast_p99, p99, "ms")
        row("memory per pod beside the app", a.mast_mem, mem, "MB PSS (mast: shim + pause; containerd: its shim, no pause)")
    finally:
        for n in names:
            subprocess.run(ctr + ["task", "kill", "-s", "9", n], capture_output=True)
        time.sleep(0.5)
        for n in names:
            subprocess.run(ctr + ["task", "rm", "-f", n], capture_output=True)
            subprocess.run(ctr + ["containers", "rm", n], capture_output=True)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
        shutil.rmtree(d, ignore_errors=True)

if __name__ == "__main__":
    main()
