"""Form state for every HTML form: a service's refusal, placed next to the fields it names.

Services name fields in the JSON API's words (``params.keep_daily``, ``retention.keep_within``,
``include[3]``); a page shows each message under its field and only what fits no field in
the problem banner above the form. WTForms forms use :func:`place_refusal`; the pages that
render plain values (restore wizard, source group form) use :func:`sort_refusal`. Both
render through the macros in ``templates/_forms.html``.
"""

from __future__ import annotations

from typing import Callable, Optional

from app.services.errors import ServiceError


def sort_messages(
    fields: dict, field_of: Callable[[str], Optional[str]]
) -> tuple[dict[str, list[str]], list[str]]:
    """The service's messages by form field (``field_of`` maps a service field name to a
    form field, or None), and those that fit no field."""
    placed: dict[str, list[str]] = {}
    unplaced: list[str] = []
    for name, messages in (fields or {}).items():
        if isinstance(messages, str):
            messages = [messages]
        key = field_of(name)
        if key is None:
            unplaced.extend(messages)
        else:
            placed.setdefault(key, []).extend(messages)
    return placed, unplaced


def banner(refused: ServiceError, unplaced: list[str]) -> Optional[str]:
    """The problem banner's line: the messages that fit no field, or the refusal's own
    message when it names no field (``None`` when every message sits next to its field)."""
    if unplaced or not refused.fields:
        return " ".join(unplaced) or refused.message
    return None


def sort_refusal(
    refused: ServiceError, field_of: Callable[[str], Optional[str]]
) -> tuple[dict[str, list[str]], Optional[str]]:
    """For pages without a WTForms form: (messages by field, banner line)."""
    placed, unplaced = sort_messages(refused.fields, field_of)
    return placed, banner(refused, unplaced)


def place_errors(form, fields: dict, *, prefixes: tuple[str, ...] = ()) -> list[str]:
    """Put a service's messages next to a WTForms form's fields; return those that fit none.

    ``prefixes`` are stripped from the service's field names first (``params.keep_last``).
    """

    def field_of(name: str) -> Optional[str]:
        for prefix in prefixes:
            name = name.removeprefix(prefix)
        return name if name in form._fields else None

    placed, unplaced = sort_messages(fields, field_of)
    for name, messages in placed.items():
        field = form._fields[name]
        field.errors = [*field.errors, *(_in_form_words(m, name, field) for m in messages)]
    return unplaced


def place_refusal(form, refused: ServiceError, *, prefixes: tuple[str, ...] = ()) -> Optional[str]:
    """Put a service's refusal on a WTForms form; return the line for the problem banner."""
    return banner(refused, place_errors(form, refused.fields, prefixes=prefixes))


def _in_form_words(message: str, name: str, field) -> str:
    """The API's words start with the JSON name ("keep_daily must be …"); next to the field,
    say what the form calls it ("Keep daily must be …")."""
    if not message.startswith(name + " "):
        return message
    label = field.label.text
    if name.startswith("keep_") and not label.lower().startswith("keep"):
        label = f"Keep {label.lower()}"  # the Run-now forget form's fields sit under "Keep"
    return label + message[len(name) :]
