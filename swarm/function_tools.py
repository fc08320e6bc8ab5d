"""Typed Python callables as tools: JSON schema from the signature and docstring, validation by pydantic.

A tool is any sync or async function with type hints. `@tool` makes one explicitly (and lets you set
its name, concurrency cap, timeout and retries); `as_tool` turns a plain callable or bound method,
such as `kimi_swarm.tools.Web().search`, into one when it is handed to a `Swarm`. `Tool.from_schema`
makes one from a JSON schema instead (an MCP server's tools), validated by jsonschema.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, get_type_hints

from jsonschema import validators
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import PydanticSerializationError, to_jsonable_python

from kimi_swarm.backend.chat.messages import ToolSpec
from kimi_swarm.tools import ToolError, has_untrusted_output, wrap_untrusted
from kimi_swarm.tools.mcp import MCPServer, MCPServerError, MCPTool

_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_SECTION_HEADER = re.compile(r"^\s*(Returns|Yields|Raises|Examples?|Notes?|Attributes|See Also):\s*$")
_ARG_LINE = re.compile(r"^\s*\**(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
PROBLEM_CHARS = 300
"""A schema problem's message quotes the offending value: long values are cut so the correction stays short."""


class TransientToolError(Exception):
    """Raise from a tool when a retry may succeed (a flaky upstream, a busy resource)."""


class ToolArgumentsError(ValueError):
    """The model's arguments do not fit the tool's schema; the message tells the model what to fix."""


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into its description and per-argument descriptions."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    arguments: dict[str, str] = {}
    section = "description"
    current: str | None = None
    for line in lines:
        if _ARGS_HEADER.match(line):
            section, current = "args", None
            continue
        if _SECTION_HEADER.match(line):
            section, current = "other", None
            continue
        if section == "description":
            description.append(line)
        elif section == "args":
            match = _ARG_LINE.match(line)
            indent = len(line) - len(line.lstrip())
            if match and (current is None or indent <= _arg_indent(lines, current)):
                current = match.group(1)
                arguments[current] = match.group(2).strip()
            elif current and line.strip():
                arguments[current] = f"{arguments[current]} {line.strip()}".strip()
    return "\n".join(description).strip(), arguments


def _arg_indent(lines: list[str], name: str) -> int:
    for line in lines:
        match = _ARG_LINE.match(line)
        if match and match.group(1) == name:
            return len(line) - len(line.lstrip())
    return 0


class Tool:
    """A callable the model can use: its spec, how its arguments are checked, and how to run it.

    Its arguments are declared by `fn`'s signature (checked by a pydantic model), or by `parameters`, a JSON
    schema (checked by jsonschema): then `fn` takes them as one dict, as `Tool.from_schema` makes it.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: dict[str, Any] | None = None,
        max_concurrency: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        untrusted: bool | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        summary, argument_docs = parse_docstring(inspect.getdoc(fn))
        self.description = description if description is not None else summary
        self.arguments_model: type[BaseModel] | None = None
        self.schema_validator: Validator | None = None
        if parameters is None:
            self.arguments_model = _arguments_model(fn, self.name, argument_docs)
            self.parameters = _clean_schema(self.arguments_model.model_json_schema())
        else:
            self.schema_validator = _schema_validator(self.name, parameters)
            self.parameters = _clean_schema(parameters)
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None))  # noqa: B004  (an object whose __call__ is async)
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.retries = retries
        self.untrusted = has_untrusted_output(fn) if untrusted is None else untrusted

    @classmethod
    def from_schema(
        cls,
        name: str,
        description: str,
        parameters: dict[str, Any],
        call: Callable[[dict[str, Any]], Awaitable[Any]],
        *,
        max_concurrency: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        untrusted: bool = False,
    ) -> Tool:
        """A tool declared by a JSON schema rather than a signature (an MCP server's): `await call(arguments)`
        gets the checked arguments as one dict, since their names need not be Python identifiers. Raises
        ValueError for a bad name or a schema that is not valid JSON schema."""
        return cls(call, name=name, description=description, parameters=parameters, max_concurrency=max_concurrency,
                   timeout=timeout, retries=retries, untrusted=untrusted)

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def validate(self, arguments_json: str) -> dict[str, Any]:
        """Parse and check the model's raw argument text; raises ToolArgumentsError saying what is wrong."""
        try:
            raw = json.loads(arguments_json or "{}")
        except json.JSONDecodeError as error:
            raise ToolArgumentsError(f"arguments are not valid JSON ({error.msg} at position {error.pos})") from None
        if not isinstance(raw, dict):
            raise ToolArgumentsError(f"arguments must be a JSON object, got {type(raw).__name__}")
        if self.schema_validator is not None:
            problems = [f"{'.'.join(map(str, e.absolute_path)) or 'arguments'}: {e.message[:PROBLEM_CHARS]}"
                        for e in self.schema_validator.iter_errors(raw)]
            if problems:
                raise ToolArgumentsError("; ".join(problems))
            return raw
        assert self.arguments_model is not None
        try:
            parsed = self.arguments_model.model_validate(raw)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in error.errors())
            raise ToolArgumentsError(problems) from None
        return {field: getattr(parsed, field) for field in type(parsed).model_fields}

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        """Run the function; sync functions run in a worker thread so they never block the agents."""
        call = (functools.partial(self.fn, arguments) if self.schema_validator is not None
                else functools.partial(self.fn, **arguments))
        if self.is_async:
            return await call()
        return await asyncio.to_thread(call)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    max_concurrency: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
) -> Any:
    """Decorator: `@tool` or `@tool(name=..., max_concurrency=..., timeout=..., retries=...)`."""

    def wrap(function: Callable[..., Any]) -> Tool:
        return Tool(function, name=name, description=description, max_concurrency=max_concurrency,
                    timeout=timeout, retries=retries)

    return wrap(fn) if fn is not None else wrap


def as_tool(obj: Tool | Callable[..., Any]) -> Tool:
    if isinstance(obj, Tool):
        return obj
    if not callable(obj):
        raise TypeError(f"{obj!r} is not a tool: pass an @tool function or a typed callable")
    return Tool(obj)


def mcp_tool(server: MCPServer, spec: MCPTool) -> Tool:
    """One tool of an open MCP server, marked untrusted: all a server says is data, so its error messages
    reach the agent wrapped as well. MCPServerError if the tool cannot be declared to a model."""

    async def call(arguments: dict[str, Any]) -> str:
        try:
            return await server.call(spec.name, arguments)
        except ToolError as error:
            raise ToolError(wrap_untrusted(str(error), spec.name)) from None

    try:
        return Tool.from_schema(spec.name, spec.description, spec.input_schema, call, untrusted=True)
    except ValueError as error:
        raise MCPServerError(f"MCP server `{server.label}`: {error}") from None


def _schema_validator(tool_name: str, schema: dict[str, Any]) -> Validator:
    """A validator for the schema's own JSON-schema draft (its `$schema`, else the latest)."""
    checker = validators.validator_for(schema)
    try:
        checker.check_schema(schema)
    except SchemaError as error:
        raise ValueError(f"tool {tool_name!r}: its parameters are not a valid JSON schema ({error.message})") from None
    return checker(schema)


def _arguments_model(fn: Callable[..., Any], tool_name: str, docs: dict[str, str]) -> type[BaseModel]:
    signature = inspect.signature(fn)
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else fn.__call__
    try:
        hints = get_type_hints(target)
    except (NameError, TypeError) as error:
        raise TypeError(f"tool {tool_name!r}: cannot resolve type hints ({error})") from None
    fields: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"tool {tool_name!r}: *args/**kwargs cannot be described to a model")
        if parameter.name not in hints:
            raise TypeError(f"tool {tool_name!r}: parameter {parameter.name!r} needs a type hint")
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints[parameter.name], Field(default, description=docs.get(parameter.name)))
    return create_model(f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's auto titles: they cost prompt tokens and tell the model nothing."""
    if isinstance(schema, dict):
        return {k: _clean_schema(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_clean_schema(v) for v in schema]
    return schema


def render_output(value: Any) -> str:
    """A tool's return value as the text the model reads: its `to_text()` where it has one, else JSON."""
    if isinstance(value, str):
        return value
    if callable(getattr(value, "to_text", None)):
        return str(value.to_text())
    if isinstance(value, (list, tuple)) and value and all(callable(getattr(v, "to_text", None)) for v in value):
        return "\n\n".join(str(v.to_text()) for v in value)
    try:
        return json.dumps(to_jsonable_python(value), ensure_ascii=False)
    except (TypeError, ValueError, PydanticSerializationError):
        return str(value)
