"""The one exception the web tools raise: its message is written for the agent that called the tool."""


class ToolError(Exception):
    """A refusal or failure an agent can act on (inside a swarm it becomes an error tool result)."""
