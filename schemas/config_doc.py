"""The configuration reference (docs/configuration.md), rendered from the config models' own help
text so the docs cannot drift from the code (a test compares them)."""
from __future__ import annotations

import re
import typing

from pydantic import BaseModel

from schemas.audit import AuditConfig
from schemas.config import BuildConfig
from schemas.eval_config import EvalConfig
from schemas.train_config import TrainConfig

#: The configs a user writes, with the command that reads each.
CONFIGS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("`cli.py build --config`", BuildConfig),
    ("`cli.py audit --config`", AuditConfig),
    ("`cli.py train --config`", TrainConfig),
    ("`cli.py eval --config`", EvalConfig),
)


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else None
    return text or re.sub(r"\bschemas\.\w+\.", "", str(annotation).replace("typing.", ""))


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def render_config_reference() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config models in `schemas/` (`python -m schemas.config_doc > docs/configuration.md`).",
        "Unknown keys are errors; every error names the file and the key. Sections shared by several",
        "configs (reward models, resources, Ray) are listed once, where they first appear.",
    ]
    seen: set[type[BaseModel]] = set()
    for command, top in CONFIGS:  # each config's sections together, breadth first
        lines += ["", f"# {top.__name__} ({command})"]
        queue: list[tuple[str, type[BaseModel]]] = [("top level", top)]
        while queue:
            title, model = queue.pop(0)
            if model in seen:
                continue
            seen.add(model)
            lines += ["", f"## `{model.__name__}` — {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
            for name, field in model.model_fields.items():
                if field.is_required():
                    default = "required"
                else:
                    value = field.get_default(call_default_factory=True)
                    default = "its defaults" if isinstance(value, BaseModel) else f"`{value!r}`"
                kind = _type_name(field.annotation).replace("|", "\\|")
                lines.append(f"| `{name}` | `{kind}` | {default} | {field.description or ''} |")
                queue += [(f"`{name}`", m) for m in _models_in(field.annotation)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_config_reference(), end="")
