"""Running the operator image against the real control plane: a kubeconfig the image's user can
read, and an HTTP probe for its endpoints."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from harness.control_plane import ControlPlane


def self_contained_kubeconfig(plane: ControlPlane, target: Path) -> Path:
    """The plane's kubeconfig with its certificate files inlined, readable by any uid.

    The image runs as uid 65532, which cannot read the plane's root-owned key files; inlining
    them (what ``kubectl config view --raw --flatten`` does) lets one read-only file serve.
    """
    config = yaml.safe_load(plane.kubeconfig.read_text())
    for entry_list, inner in (("clusters", "cluster"), ("users", "user")):
        for entry in config.get(entry_list, []):
            body = entry[inner]
            for key in ("certificate-authority", "client-certificate", "client-key"):
                if key in body:
                    data = Path(body.pop(key)).read_bytes()
                    body[f"{key}-data"] = base64.b64encode(data).decode()
    target.write_text(yaml.safe_dump(config))
    target.chmod(0o644)
    return target


def answers(port: int, path: str) -> bool:
    """``GET http://127.0.0.1:<port><path>`` answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False
