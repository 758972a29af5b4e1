"""Reading manifests: YAML without aliases, size limits, one message per bad field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from kubetune.spec._base import KIND, MAX_MANIFEST_BYTES, SpecError
from kubetune.spec._status import TuningStudy


class _NoAliasLoader(yaml.SafeLoader):
    """Refuses YAML aliases: a few anchors can expand into gigabytes (billion laughs)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases are not supported in manifests", event.start_mark
            )
        return super().compose_node(parent, index)


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ""
        parts = e["loc"]
        for n, part in enumerate(parts):
            if isinstance(part, int):
                loc += f"[{part}]"
            elif n == len(parts) - 1 and n > 0 and part in {"str", "int", "float", "bool"}:
                continue  # a trailing union member tag adds nothing for a reader
            else:
                loc += f".{part}" if loc else str(part)
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc or '<root>'}: {msg}")
    return "\n".join(dict.fromkeys(lines))


def parse_manifest(obj: object) -> TuningStudy:
    """Validate an already-decoded manifest; raise SpecError naming the bad fields."""
    if not isinstance(obj, dict):
        raise SpecError(f"<root>: a TuningStudy must be a mapping, got {type(obj).__name__}")
    try:
        return TuningStudy.model_validate(obj)
    except ValidationError as e:
        raise SpecError(_format_error(e)) from None
    except RecursionError:
        raise SpecError("<root>: manifest is nested too deeply") from None


def load_manifest(source: str | Path) -> TuningStudy:
    """Load a TuningStudy from a path or from YAML text."""
    if isinstance(source, Path) or ("\n" not in source and Path(source).exists()):
        path = Path(source)
        try:
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise SpecError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SpecError(f"{path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise SpecError(f"{path}: not UTF-8 text") from None
    else:
        text = source
    if len(text) > MAX_MANIFEST_BYTES:
        raise SpecError(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        docs = [d for d in yaml.load_all(text, Loader=_NoAliasLoader) if d is not None]
    except yaml.YAMLError as e:
        raise SpecError(f"not valid YAML: {e}") from None
    except RecursionError:
        raise SpecError("<root>: manifest is nested too deeply") from None
    studies = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(studies) != 1:
        if len(docs) == 1:
            return parse_manifest(docs[0])
        raise SpecError(f"expected exactly one TuningStudy document, found {len(studies)}")
    return parse_manifest(studies[0])
