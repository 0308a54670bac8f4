"""Crash durability: every create acknowledged with 201 survives `kill -9`."""
import threading
import time

from kubernetes import client
from kubernetes.client.rest import ApiException

TOTAL = 2000
WORKERS = 8


def test_acknowledged_creates_survive_kill_9(mast):
    acked = {}          # name -> resourceVersion
    lock = threading.Lock()
    stop = threading.Event()

    def worker(w):
        core = client.CoreV1Api(mast.client())
        for i in range(w, TOTAL, WORKERS):
            if stop.is_set():
                return
            name = f"cm-{i}"
            try:
                cm = core.create_namespaced_config_map(
                    "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"i": str(i)}),
                    _request_timeout=10)
            except Exception:
                # The server died under us: this create was never acknowledged.
                return
            with lock:
                acked[name] = int(cm.metadata.resource_version)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(WORKERS)]
    for t in threads:
        t.start()
    deadline = time.time() + 120
    while time.time() < deadline:
        with lock:
            if len(acked) >= TOTAL // 2:
                break
        time.sleep(0.01)
    mast.kill9()            # midway, with creates in flight
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert TOTAL // 2 <= len(acked) < TOTAL, f"{len(acked)} acknowledged before the kill"

    mast.restart()
    core = client.CoreV1Api(mast.client())
    present = {}
    for cm in core.list_namespaced_config_map("default").items:
        present[cm.metadata.name] = int(cm.metadata.resource_version)
    missing = sorted(set(acked) - set(present))
    assert not missing, f"{len(missing)} acknowledged creates lost, e.g. {missing[:5]}"
    for name, rv in acked.items():
        assert present[name] == rv, f"{name} came back at a different resourceVersion"
    # Revisions keep increasing after the restart.
    after = core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="after-restart")))
    assert int(after.metadata.resource_version) > max(present.values())
    try:
        core.read_namespaced_config_map("cm-not-there", "default")
    except ApiException as e:
        assert e.status == 404
