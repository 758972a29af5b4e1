"""The harness's own API client: its watches survive whatever a stored object contains."""

from __future__ import annotations

import json

from harness import Cluster
from harness.kube import json_lines

# Characters str.splitlines (and so httpx's iter_lines) breaks at, which JSON leaves unescaped.
ODD = "a\x85b\u2028c\u2029d"


def test_watch_lines_split_at_newlines_only() -> None:
    event = json.dumps({"type": "ADDED", "object": {"data": {"k": ODD}}}, ensure_ascii=False)
    stream = (event + "\n" + event + "\n" + event[:10]).encode()
    chunks = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    lines = list(json_lines(chunks))
    assert [json.loads(line)["object"]["data"]["k"] for line in lines] == [ODD, ODD]


def test_the_recorder_keeps_watching_after_an_object_with_odd_characters(
    cluster: Cluster,
) -> None:
    cluster.api.create("configmaps", {"metadata": {"name": "odd"}, "data": {"k": ODD}}, "default")
    cluster.api.create("configmaps", {"metadata": {"name": "after"}}, "default")
    cluster.api.wait_for(
        lambda: (
            {"odd", "after"}
            <= {e.obj["metadata"]["name"] for e in cluster.history if e.key == "configmaps"}
        ),
        message="the recorder did not see both ConfigMaps",
    )
    odd = next(e.obj for e in cluster.history if e.obj["metadata"]["name"] == "odd")
    assert odd["data"]["k"] == ODD
