"""The document framework: dataclasses that read and write their JSON by field, keeping unknown keys."""

from __future__ import annotations

import copy
import types
from dataclasses import MISSING, field, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from .. import __version__
from ..base.errors import SSMProfileError

PLAN_SCHEMA_VERSION = 1
PLAN_KIND = "ssm-profile-plan"
PRUNING_KIND = "ssm-profile-pruning"
VALIDATION_KIND = "ssm-profile-validation"
PRUNING_FILE = "pruning.json"
VALIDATION_FILE = "validation.json"
RECOVERY_KIND = "ssm-profile-recovery"
RECOVERY_FILE = "recovery.json"
LM_EVAL_LOG = "lm-eval.log"  # beside validation.json: what lm-eval and the tools it runs printed


# ============================================================================================
# the (de)serialisation shared by every document


def _key(f) -> str:
    return f.metadata.get("key", f.name)


def _optional(**kw: Any) -> Any:
    """A field left out of the JSON when it is None (an optional key of the file format)."""
    return field(default=None, metadata={"omit_none": True, **kw})


def _document_type(hint: Any) -> type | None:
    """The :class:`Document` class in ``hint`` (``X``, ``X | None``, ``list[X]``), if any."""
    if isinstance(hint, type) and issubclass(hint, Document):
        return hint
    for arg in get_args(hint):
        found = _document_type(arg)
        if found is not None:
            return found
    return None


def _load(hint: Any, value: Any) -> Any:
    doc = _document_type(hint)
    if value is None or doc is None:
        return copy.deepcopy(value)
    container = next((get_origin(a) for a in (hint, *get_args(hint)) if get_origin(a) in (list, dict)), None)
    if container is list:
        return [doc.from_dict(v) for v in value]
    if container is dict:
        return {k: doc.from_dict(v) for k, v in value.items()}
    return doc.from_dict(value)


def _dump(value: Any) -> Any:
    if isinstance(value, Document):
        return value.to_dict()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return copy.deepcopy(value)


def json_matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value can be a field of type ``hint`` (float takes ints; bools are not numbers;
    a Document takes an object; what cannot be told is accepted)."""
    origin = get_origin(hint)
    if hint is Any:
        return True
    if origin is Union or isinstance(hint, types.UnionType):
        return any(json_matches(value, h) for h in get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        args = [a for a in get_args(hint) if a is not Ellipsis]
        return isinstance(value, list) and (len(args) != 1 or all(json_matches(v, args[0]) for v in value))
    if origin is dict:
        args = get_args(hint)
        return isinstance(value, dict) and (len(args) != 2 or all(json_matches(v, args[1]) for v in value.values()))
    if isinstance(hint, type) and issubclass(hint, Document):
        return isinstance(value, dict)
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    if hint is int:  # JSON (and its schemas) call 3.0 an integer
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, hint) if isinstance(hint, type) else True


class DocumentTypeError(TypeError):
    """A document's field holds a value of another type (``field`` names it, dotted from the top)."""

    def __init__(self, field: str, value: Any, reason: str = ""):
        self.reason = reason or f"has the wrong type ({type(value).__name__})"
        super().__init__(f"field '{field}' {self.reason}")
        self.field, self.value = field, value


class Document:
    """Dataclass mixin: ``to_dict``/``from_dict`` by field (JSON key = ``metadata["key"]`` or the name);
    ``from_dict`` refuses a field of another type (:class:`DocumentTypeError`, naming it)."""

    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or f.metadata.get("runtime") or (value is None and f.metadata.get("omit_none")):
                continue
            out[_key(f)] = _dump(value)
        out.update(copy.deepcopy(self.extra))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        hints = get_type_hints(cls)
        own = [f for f in fields(cls) if f.name != "extra" and not f.metadata.get("runtime")]
        if not isinstance(data, dict):
            raise DocumentTypeError("(the object)", data)
        for f in own:
            if _key(f) in data and not json_matches(data[_key(f)], hints[f.name]):
                raise DocumentTypeError(_key(f), data[_key(f)])
            if _key(f) not in data and f.default is MISSING and f.default_factory is MISSING:
                raise DocumentTypeError(_key(f), data, "is missing")  # data: found by identity from above
        try:
            kwargs = {f.name: _load(hints[f.name], data[_key(f)]) for f in own if _key(f) in data}
        except DocumentTypeError as err:  # a nested document's field: name it from here
            inner = next(_key(f) for f in own if _key(f) in data and _holds(data[_key(f)], err.value))
            raise DocumentTypeError(f"{inner}.{err.field}", err.value, err.reason) from None
        known = {_key(f) for f in own}
        return cls(**kwargs, extra={k: copy.deepcopy(v) for k, v in data.items() if k not in known})


def _extra() -> Any:
    return field(default_factory=dict, repr=False)



def parse_document(cls: type, data: dict[str, Any], where: str) -> Any:
    """``cls.from_dict(data)``, or one line naming the keys ``data`` lacks."""
    required = [_key(f) for f in fields(cls) if f.name != "extra" and not f.metadata.get("runtime")
                and f.default is MISSING and f.default_factory is MISSING]
    missing = [key for key in required if key not in data]
    if missing:
        raise SSMProfileError(f"{where} lacks {', '.join(missing)}; write it again with this ssm-profile ({__version__})")
    try:
        return cls.from_dict(data)
    except DocumentTypeError as err:
        raise SSMProfileError(f"{where}: {err}; write it again with this ssm-profile ({__version__})") from None


def _holds(container: Any, value: Any) -> bool:
    """Whether ``value`` (the very object) lies anywhere inside ``container``."""
    if container is value:
        return True
    items = container.values() if isinstance(container, dict) else container if isinstance(container, list) else ()
    return any(_holds(item, value) for item in items)
