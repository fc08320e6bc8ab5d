"""Errors in OpenAI's shape: an HTTP status and {"error": {"message", "type", "param", "code"}}.

Clients branch on the status (the openai package raises BadRequestError for 400, AuthenticationError for 401, ...)
and show the message, so every message names what was wrong and, where there is one, the field (`param`).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    """A request the server answers with an error status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> APIError:
    """400; with `param`, the message starts by naming the field."""
    return APIError(400, f"Invalid value for '{param}': {message}" if param else message, param=param)


def too_large(message: str) -> APIError:
    return APIError(413, message, code="context_length_exceeded")


def overloaded(message: str) -> APIError:
    return APIError(503, f"{message}; retry in a moment", type="server_error", code="server_overloaded",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def unauthorized() -> APIError:
    return APIError(401, "Incorrect or missing API key: send it as 'Authorization: Bearer KEY'.",
                    code="invalid_api_key")


def field_path(location: tuple[int | str, ...]) -> str:
    """A pydantic error location as OpenAI names fields: messages[0].role."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def invalid_body(error: ValidationError) -> APIError:
    """400 for the first field that is missing or of the wrong type, named."""
    first = error.errors(include_url=False)[0]
    location = tuple(part for part in first["loc"] if not _is_union_branch(part))
    param = field_path(location)
    return bad_request(first["msg"], param or None)


def _is_union_branch(part: int | str) -> bool:
    """Pydantic puts the tried type of a union into the location (e.g. 'str', 'list[TextPart]'); OpenAI's names
    stop at the field."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "none"} or "[" in part
                                      or part.startswith(("function-", "literal[")) or part[:1].isupper())
