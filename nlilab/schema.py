"""What profile blocks are made of: a strict pydantic base model, the value types the blocks share, and the words
an error message uses for what a key accepts (read off the key's type, so the two cannot drift apart).

Each block itself is described next to the code that reads it (nlilab/data/config.py, training/config.py,
methods/config.py, methods/qlora_config.py, prompting/config.py, models/config.py); nlilab.params puts them together.
"""

from __future__ import annotations

import inspect
import types
from typing import Annotated, Literal, TypeVar, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, MinLen
from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict
from pydantic.fields import FieldInfo


class Block(BaseModel):
    """A profile block. An unknown key is an error: a misspelt key must not pass silently, leaving the default."""

    model_config = ConfigDict(extra="forbid")


def _numeric_text(value):
    """YAML 1.1 reads `5e-5` as text, so numeric text is a number; whole numbers become floats too, so a block reads
    the same however it is spelt. Anything else (true, 'big') is left to fail as not a number."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def number(*constraints) -> object:
    """A float with its constraints checked on the converted value (so an error shows `got -1.0` for `-1`)."""
    return Annotated[(float, Strict(), *constraints, BeforeValidator(_numeric_text))]


PositiveNumber = number(Gt(0))
NonNegativeNumber = number(Ge(0))
Fraction = number(Ge(0), Le(1))
Integer = Annotated[int, Strict()]  # not true, not 8.0, not "8"
Flag = Annotated[bool, Strict()]  # not "yes", not 1
Text = Annotated[str, Strict(), MinLen(1)]
T = TypeVar("T")
NonEmptyList = Annotated[list[T], Strict(), MinLen(1)]
Seeds = NonEmptyList[Annotated[int, Strict(), Ge(0)]]  # one run each; null: the profile's one `seed`
# Whether a finished seed's model folder is kept: a full fine-tune of roberta-large is 1.4 GB a seed.
KeepModels = Literal["first", "all", "none"]


# ------------------------------------------------------------------------------------------- words for errors
def _unwrap(annotation, notes=()) -> tuple[object, list]:
    """The bare type under Annotated[...] and `X | None`, with the constraints and field infos met on the way."""
    notes = list(notes)
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *more = get_args(annotation)
            notes += more
        elif origin in (Union, types.UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            break
    flat = []
    for note in notes:
        flat += [note, *note.metadata] if isinstance(note, FieldInfo) else [note]
    return annotation, flat


def field_at(schema: type[BaseModel], loc: tuple) -> tuple[object, list]:
    """The type (and its notes) of the key at a pydantic error location such as ('train', 'batch_size') or
    ('seeds', 1)."""
    annotation, notes = schema, []
    for part in loc:
        annotation, _ = _unwrap(annotation)
        if isinstance(part, int):  # a list item
            (annotation,), notes = get_args(annotation), []
        else:
            info = annotation.model_fields[part]
            annotation, notes = info.annotation, [info]
    return annotation, notes


def keys_at(schema: type[BaseModel], loc: tuple) -> list[str]:
    """The keys of the block at a location: () for the schema itself, ('train',) for its `train` block."""
    block, _ = _unwrap(*field_at(schema, loc))
    return list(block.model_fields)


def expected(annotation, notes=()) -> str:
    """What a key of this type accepts, in words: 'an integer >= 1', "one of 'cpu', 'cuda'", 'a mapping'. A key
    whose type says too little names it itself, in its field's description."""
    annotation, notes = _unwrap(annotation, notes)
    described = [n.description for n in notes if isinstance(n, FieldInfo) and n.description]
    if described:
        return described[0]
    bound = {type(n): n for n in notes if isinstance(n, (Gt, Ge, Le, MinLen))}
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(annotation))
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        return ("a non-empty list" if MinLen in bound else "a list") + ", each " + expected(item)
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "a mapping"
    if annotation is int:
        return "an integer" + (f" >= {bound[Ge].ge}" if Ge in bound else "")
    if annotation is float:
        if Gt in bound:
            return "a positive number" if bound[Gt].gt == 0 else f"a number > {bound[Gt].gt}"
        if Ge in bound and Le in bound:
            return f"a number in [{bound[Ge].ge}, {bound[Le].le}]"
        return f"a number >= {bound[Ge].ge}" if Ge in bound else "a number"
    return {bool: "true or false", str: "a string"}.get(annotation, str(annotation))
