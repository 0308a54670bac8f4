"""The official Kubernetes Python client against mast."""
import threading

from kubernetes import client, watch
from kubernetes.client.rest import ApiException
import pytest


def deployment(name, image="nginx:1.25", labels=None):
    labels = labels or {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="web", image=image)]),
            ),
        ),
    )


def test_deployment_and_configmap_lifecycle(mast):
    api = mast.client()
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)

    apps.create_namespaced_deployment("default", deployment("web", labels={"app": "web", "tier": "frontend"}))
    apps.create_namespaced_deployment("default", deployment("db", labels={"app": "db", "tier": "backend"}))
    core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="settings", labels={"tier": "frontend"}), data={"color": "blue"}))

    front = apps.list_namespaced_deployment("default", label_selector="tier=frontend")
    assert [d.metadata.name for d in front.items] == ["web"]
    both = apps.list_namespaced_deployment("default", label_selector="tier in (frontend,backend)")
    assert sorted(d.metadata.name for d in both.items) == ["db", "web"]
    assert [c.metadata.name for c in core.list_namespaced_config_map("default", label_selector="tier=frontend").items] == ["settings"]
    named = apps.list_namespaced_deployment("default", field_selector="metadata.name=db")
    assert [d.metadata.name for d in named.items] == ["db"]

    # Strategic merge patch (the client's default for dicts): containers merge by name.
    apps.patch_namespaced_deployment("web", "default", {"spec": {"template": {"spec": {
        "containers": [{"name": "web", "image": "nginx:1.26"}]}}}})
    d = apps.read_namespaced_deployment("web", "default")
    assert d.spec.template.spec.containers[0].image == "nginx:1.26"
    assert d.metadata.generation == 2
    # JSON merge patch.
    core.patch_namespaced_config_map("settings", "default", {"data": {"size": "L", "color": None}},
                                     _content_type="application/merge-patch+json")
    cm = core.read_namespaced_config_map("settings", "default")
    assert cm.data == {"size": "L"}

    # Optimistic concurrency through replace.
    stale = apps.read_namespaced_deployment("db", "default")
    apps.patch_namespaced_deployment("db", "default", {"metadata": {"labels": {"bump": "1"}}})
    with pytest.raises(ApiException) as e:
        apps.replace_namespaced_deployment("db", "default", stale)
    assert e.value.status == 409

    apps.delete_namespaced_deployment("web", "default")
    core.delete_namespaced_config_map("settings", "default")
    with pytest.raises(ApiException) as e:
        apps.read_namespaced_deployment("web", "default")
    assert e.value.status == 404
    assert [d.metadata.name for d in apps.list_namespaced_deployment("default").items] == ["db"]


def test_watch_from_a_resource_version(mast):
    api = mast.client()
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="before")))
    rv = core.list_namespaced_config_map("default").metadata.resource_version

    def writer():
        core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="after")))
        core.patch_namespaced_config_map("after", "default", {"data": {"k": "v"}})
        core.delete_namespaced_config_map("after", "default")

    threading.Timer(0.5, writer).start()
    seen = []
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=10):
        seen.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED":
            w.stop()
    # Only changes after the resourceVersion arrive, in order.
    assert seen == [("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "after")]


@pytest.mark.parametrize("mast", [["--compaction-interval", "1s"]], indirect=True)
def test_watch_from_compacted_history_is_410_gone(mast):
    import time
    api = mast.client()
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c")))
    old_rv = core.list_namespaced_config_map("default").metadata.resource_version
    for i in range(5):
        core.patch_namespaced_config_map("c", "default", {"data": {"i": str(i)}})
    time.sleep(3.5)  # two compaction rounds
    w = watch.Watch()
    with pytest.raises(ApiException) as e:
        for _ in w.stream(core.list_namespaced_config_map, "default", resource_version=old_rv, timeout_seconds=5):
            pass
    assert e.value.status == 410
    # A list from the present still works, and so does a watch from it.
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    assert int(rv) > int(old_rv)
