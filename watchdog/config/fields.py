"""The building blocks of the settings: ``Secret``, ``parse_duration``, one annotated type per kind
of value (each converting what YAML or an environment variable gives and saying, in the config's
words, what is wrong), and ``Section``, the base model that reports every problem at once.

Validators raise ``problem()`` errors whose text is the final message; the loader only adds the
key path and the YAML line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Annotated, Any, ClassVar, Self

import pydantic
import pydantic_core
from pydantic_core import core_schema

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# Validation context key: set when the values come from a config file (see Section.internal).
FROM_FILE = "from_file"
# The default of a field whose default is worked out from the fields before it (validate_default).
DERIVED: Any = None


class Secret(pydantic.SecretStr):
    """A string that never shows itself in repr/str/format. ``reveal()`` to use it.

    ``template`` is the config text it came from when that was a ``${VAR}`` reference (or the
    ``WATCHDOG_*`` variable that set it): not secret, so ``config check`` can print it.
    """

    __slots__ = ("template",)

    def __init__(self, value: str, template: str | None = None) -> None:
        super().__init__(value)
        self.template = template

    def reveal(self) -> str:
        return self.get_secret_value()

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reveal() == self.reveal()

    def __hash__(self) -> int:
        return hash(self.reveal())

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: pydantic.GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _to_secret,
            serialization=core_schema.plain_serializer_function_ser_schema(
                _dump_secret, info_arg=True
            ),
        )


def _dump_secret(secret: Secret, info: core_schema.SerializationInfo) -> Any:
    """``model_dump()`` keeps the Secret; JSON shows ``***`` (or ``""`` for an empty one)."""
    if info.mode == "json":
        return "***" if secret else ""
    return secret


def problem(message: str) -> pydantic_core.PydanticCustomError:
    """A validation error whose text is ``message`` as the user reads it."""
    return pydantic_core.PydanticCustomError("config", "{msg}", {"msg": message})


def parse_duration(value: object) -> float:
    """``30s``, ``5m``, ``1h``, ``250ms``, ``1d`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(value) if isinstance(value, str) else None
        if not match:
            raise ValueError(f"{shown(value)} is not a duration (use e.g. 30s, 5m, 1h)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds):  # YAML's .inf and .nan would pass every comparison below
        raise ValueError("expected a duration like 30s, 5m or 1h")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def format_duration(seconds: float) -> str | float:
    """The shortest text ``parse_duration`` reads back as exactly ``seconds``: ``5m``, ``2.5s``,
    ``250ms``, else the number itself."""
    if seconds == 0:
        return "0s"
    candidates = [f"{int(seconds / _UNITS[u])}{u}" for u in ("d", "h", "m", "s", "ms")]
    candidates.insert(4, f"{seconds!r}s")
    for text in candidates:
        try:
            if parse_duration(text) == seconds:
                return text
        except ValueError:
            continue  # e.g. 1e-05s
    return seconds


def kind(value: object) -> str:
    """What a YAML value is, in the config's words."""
    for types, name in _KINDS:
        if isinstance(value, types):
            return name
    return type(value).__name__


_KINDS: tuple[tuple[Any, str], ...] = (
    (type(None), "null"),
    (bool, "bool"),
    (str, "str"),
    (int, "int"),
    (float, "float"),
    (dict, "mapping"),
    (list | tuple, "list"),
)


def shown(value: object) -> str:
    """A scalar as the user wrote it (shortened), a mapping or list by its kind."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = repr(str(value) if isinstance(value, str) else value)
        return text if len(text) <= 60 else text[:57] + "..."
    return repr(value) if isinstance(value, bool) else f"a {kind(value)}"


# --- converters (before validators): what YAML and the environment give -> the field's type -----


def as_text(value: Any) -> str:
    """A string from what YAML gives (a number or a date becomes its text); no mapping, list,
    bool or null."""
    if value is None or isinstance(value, bool | dict | list | tuple):
        raise problem(f"expected a string, got {kind(value)}")
    return str(value)  # also turns the loader's str subclass into a plain str


def _to_secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    return Secret(as_text(value), getattr(value, "template", None))


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise problem(str(exc)) from None


def _at_least_1s(seconds: float) -> float:
    if seconds < 1:
        raise problem("must be at least 1s")
    return seconds


def _flag(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "yes", "on", "1"):
            return True
        if word in ("false", "no", "off", "0"):
            return False
    raise problem(f"expected true or false, got {shown(value)}")


def integer(minimum: int, maximum: int) -> pydantic.BeforeValidator:
    """An integer in ``minimum..maximum``; from YAML, or a string of digits from the environment."""

    def convert(value: Any) -> int:
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(value)
        except (TypeError, ValueError, OverflowError):
            raise problem(f"expected an integer, got {shown(value)}") from None
        if not minimum <= number <= maximum:
            raise problem(f"must be between {minimum} and {maximum}")
        return number

    return pydantic.BeforeValidator(convert)


def _str_list(value: Any) -> Any:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(
        isinstance(x, str | int | float) and not isinstance(x, bool) for x in value
    ):
        return tuple(str(x) for x in value)
    raise problem("expected a list of strings")


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise problem(f"bad regular expression {pattern!r}: {exc}") from None
    return pattern


def checked(test: Callable[[Any], bool], message: str) -> pydantic.AfterValidator:
    """A rule on one value: ``message`` when ``test`` says no."""

    def check(value: Any) -> Any:
        if not test(value):
            raise problem(message.format(value=value))
        return value

    return pydantic.AfterValidator(check)


Text = Annotated[str, pydantic.BeforeValidator(as_text)]
Duration = Annotated[float, pydantic.BeforeValidator(_duration)]
Interval = Annotated[
    float, pydantic.BeforeValidator(_duration), pydantic.AfterValidator(_at_least_1s)
]
Flag = Annotated[bool, pydantic.BeforeValidator(_flag)]
Patterns = Annotated[
    tuple[Annotated[str, pydantic.AfterValidator(_regex)], ...], pydantic.BeforeValidator(_str_list)
]
StrList = pydantic.BeforeValidator(_str_list)


# --- the base of every section ---------------------------------------------------------------


def _carry(
    error: pydantic_core.ErrorDetails, loc: tuple[Any, ...]
) -> pydantic_core.InitErrorDetails:
    """``error`` again (its kind, context and text kept), at ``loc``."""
    ctx = {**(error.get("ctx") or {}), "msg": error["msg"]}
    return {
        "type": pydantic_core.PydanticCustomError(error["type"], "{msg}", ctx),
        "loc": loc,
        "input": error["input"],
    }


def _found(loc: tuple[Any, ...], message: str, value: Any = None) -> pydantic_core.InitErrorDetails:
    return {"type": problem(message), "loc": loc, "input": value}


def _blank(value: Any) -> bool:
    """Null, an empty string and an empty list all mean "not given": the default applies."""
    return value is None or (isinstance(value, str | list | tuple) and len(value) == 0)


class Section(pydantic.BaseModel):
    """A frozen settings section that refuses unknown keys and reports every problem at once:
    each field's, and the cross-field rules of ``problems()`` over the fields that are valid."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    # Fields code may set (tests, the registry client) but a config file may not.
    internal: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def prepare(cls, data: Any) -> Any:
        """The raw value in the shape of a mapping (e.g. a watch given as a bare string)."""
        return data

    def problems(self) -> Iterator[tuple[str, str]]:
        """Cross-field rules: ``(key, message)`` for each broken one. They also run when some
        field is invalid (its problem reported too), that field then holding the raw value given:
        so a rule tests the other fields for presence (truth) only."""
        return iter(())

    @pydantic.model_validator(mode="wrap")
    @classmethod
    def _every_problem(
        cls,
        data: Any,
        handler: pydantic.ModelWrapValidatorHandler[Self],
        info: pydantic.ValidationInfo,
    ) -> Self:
        data = cls.prepare(data)
        if not isinstance(data, dict):
            return handler(data)  # an instance passes; anything else: "expected a mapping"
        known = set(cls.model_fields)
        if (info.context or {}).get(FROM_FILE):
            known -= cls.internal
        found: list[pydantic_core.InitErrorDetails] = []
        given: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                names = ", ".join(sorted(known))
                found.append(_found((key,), f"unknown key (known: {names})", value))
            elif not _blank(value):
                given[key] = value
        failed: set[Any] = set()
        try:
            model = handler(given)
        except pydantic.ValidationError as exc:
            found += [_carry(e, e["loc"]) for e in exc.errors()]
            failed = {e["loc"][0] for e in exc.errors() if e["loc"]}
            try:  # the rules still run: over the valid fields, and the invalid ones as given
                model = handler({k: v for k, v in given.items() if k not in failed})
            except pydantic.ValidationError:
                raise pydantic.ValidationError.from_exception_data(cls.__name__, found) from None
            model = model.model_copy(update={k: v for k, v in given.items() if k in failed})
        found += [_found((key,), message) for key, message in model.problems() if key not in failed]
        if found:
            raise pydantic.ValidationError.from_exception_data(cls.__name__, found)
        return model


def unique(
    model: type[Section], field: str, key: Callable[[Any], str], message: str
) -> pydantic.WrapValidator:
    """A list of ``model`` whose items each validate on their own, with no two of the same
    ``key(item's field)`` (then ``message`` at the later one's ``field``): an invalid item hides
    no problem of another, and still counts for duplicates when its ``field`` is valid."""

    def key_of(item: Any) -> str | None:
        data = model.prepare(item)
        value = getattr(data, field) if isinstance(data, model) else None
        if isinstance(data, dict) and not _blank(data.get(field)):
            value = data[field]
        try:
            return None if value is None else key(value)
        except (pydantic_core.PydanticCustomError, ValueError, TypeError):
            return None  # that problem is reported by the item itself

    def check(value: Any, handler: pydantic.ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(value, list | tuple):
            return handler(value)
        found: list[pydantic_core.InitErrorDetails] = []
        valid: list[tuple[int, Any]] = []
        for i, item in enumerate(value):
            try:
                valid.append((i, handler([item])[0]))
            except pydantic.ValidationError as exc:
                found += [_carry(e, (i, *e["loc"][1:])) for e in exc.errors()]
        seen: set[str] = set()
        for i, item in enumerate(value):
            name = key_of(item)
            if name is not None and name in seen:
                found.append(_found((i, field), message.format(name)))
            if name is not None:
                seen.add(name)
        if found:
            found.sort(key=lambda e: e["loc"][0])  # in the order of the file
            raise pydantic.ValidationError.from_exception_data("list", found)
        return tuple(item for _, item in valid)

    return pydantic.WrapValidator(check)
