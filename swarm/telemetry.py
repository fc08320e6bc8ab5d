"""OpenTelemetry traces of swarm runs, opt-in: `pip install 'kimi-swarm[otel]'`, then
`swarm.add_listener(OtelTracer(tracer_provider))` or `swarm run --otel`.

`OtelTracer` builds the spans from the run's events, so every backend is traced the same way: one span
for the run, one per agent under it, and under each agent one per model turn (`chat`) and one per tool
call (`execute_tool`), with the GenAI semantic-convention attributes. Events say when things happened
relative to the run's start; the spans get wall-clock times from the moment the run started.
Nothing else in kimi_swarm imports this module, so the SDK is loaded only when tracing is asked for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
    from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
except ImportError as missing:
    raise ImportError(f"OpenTelemetry tracing needs the otel extra: pip install 'kimi-swarm[otel]' "
                      f"({missing})") from missing

from .events import (
    AgentFinished,
    AgentStarted,
    BudgetLeft,
    Event,
    ModelCallStarted,
    RunFinished,
    RunStarted,
    Tokens,
    ToolCallFinished,
    ToolCallStarted,
)
from .records import FAILED_STATUSES

WORKFLOW_NAME = "kimi-swarm"
Operation = gen_ai.GenAiOperationNameValues


class OtelTracer:
    """An event listener that turns each run into a span tree: run → agent → (chat | execute_tool).

    It follows one run at a time (events carry no run id): give runs that go side by side a tracer each.
    Spans still open when their agent or the run finishes (a turn or call cut off by the deadline or a
    failure) end there, marked as errors.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("kimi_swarm", tracer_provider=tracer_provider)
        self._origin_ns = 0
        self._model: str | None = None
        self._run: trace.Span | None = None
        self._agents: dict[int, trace.Span] = {}
        self._turns: dict[int, trace.Span] = {}
        self._calls: dict[tuple[int, str], trace.Span] = {}

    def __call__(self, event: Event) -> None:
        match event:
            case RunStarted():
                self._start_run(event)
            case AgentStarted():
                self._start_agent(event)
            case ModelCallStarted():
                self._start_turn(event)
            case Tokens():
                self._end_turn(event)
            case ToolCallStarted():
                self._start_call(event)
            case ToolCallFinished():
                self._end_call(event)
            case BudgetLeft():
                self._budget(event)
            case AgentFinished():
                self._end_agent(event)
            case RunFinished():
                self._end_run(event)

    def close(self) -> None:
        """End the spans still open, now, as errors: a run that raised (an MCP server that would not start, a
        backend that failed to open) ends without its run_finished event. The next run starts with this."""
        if self._run is not None:
            self._cut_off(None, "the run ended without finishing")
            _fail(self._run, "aborted", "the run ended without finishing")
            self._run.end()
            self._run = None

    def _ns(self, t: float | None) -> int | None:
        return None if t is None else self._origin_ns + round(t * 1e9)

    def _child(self, parent: trace.Span | None, name: str, t: float, attributes: dict[str, Any],
               kind: trace.SpanKind = trace.SpanKind.INTERNAL) -> trace.Span:
        context = trace.set_span_in_context(parent) if parent is not None else None
        return self._tracer.start_span(name, context=context, kind=kind, start_time=self._ns(t),
                                       attributes={k: v for k, v in attributes.items() if v is not None})

    def _start_run(self, event: RunStarted) -> None:
        self.close()
        self._origin_ns = time.time_ns() - round(event.t * 1e9)
        self._model = event.model
        limits = {f"kimi_swarm.limits.{name}": value for name, value in event.limits.items()}
        self._run = self._child(None, f"{Operation.INVOKE_WORKFLOW.value} {WORKFLOW_NAME}", event.t, {
            gen_ai.GEN_AI_OPERATION_NAME: Operation.INVOKE_WORKFLOW.value,
            gen_ai.GEN_AI_WORKFLOW_NAME: WORKFLOW_NAME, gen_ai.GEN_AI_REQUEST_MODEL: event.model,
            "kimi_swarm.task": event.task, **limits,
        })

    def _start_agent(self, event: AgentStarted) -> None:
        name = "orchestrator" if event.agent_id == 0 else f"sub-agent {event.agent_id}"
        self._agents[event.agent_id] = self._child(self._run, f"{Operation.INVOKE_AGENT.value} {name}", event.t, {
            gen_ai.GEN_AI_OPERATION_NAME: Operation.INVOKE_AGENT.value, gen_ai.GEN_AI_AGENT_ID: str(event.agent_id),
            gen_ai.GEN_AI_AGENT_NAME: name, gen_ai.GEN_AI_AGENT_DESCRIPTION: event.task,
            gen_ai.GEN_AI_REQUEST_MODEL: self._model, "kimi_swarm.wave": event.wave,
        })

    def _start_turn(self, event: ModelCallStarted) -> None:
        name = f"{Operation.CHAT.value} {self._model}" if self._model else Operation.CHAT.value
        self._turns[event.agent_id] = self._child(self._agents.get(event.agent_id), name, event.t, {
            gen_ai.GEN_AI_OPERATION_NAME: Operation.CHAT.value, gen_ai.GEN_AI_REQUEST_MODEL: self._model,
            gen_ai.GEN_AI_AGENT_ID: str(event.agent_id), "kimi_swarm.step": event.step,
        }, kind=trace.SpanKind.CLIENT)

    def _end_turn(self, event: Tokens) -> None:
        span = self._turns.pop(event.agent_id, None)
        if span is None:  # no model_call_started before it: a trace written before that event existed
            return
        span.set_attribute(gen_ai.GEN_AI_USAGE_INPUT_TOKENS, event.prompt_tokens)
        span.set_attribute(gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS, event.completion_tokens)
        if event.finish_reason is not None:
            span.set_attribute(gen_ai.GEN_AI_RESPONSE_FINISH_REASONS, [event.finish_reason])
        if event.finish_reason == "error":
            _fail(span, "model_error", "the model turn ended in an error")
        span.end(end_time=self._ns(event.t))

    def _start_call(self, event: ToolCallStarted) -> None:
        self._calls[event.agent_id, event.call_id] = self._tool_span(event.agent_id, event.call_id, event.tool,
                                                                      event.t)

    def _tool_span(self, agent_id: int, call_id: str, tool: str, t: float) -> trace.Span:
        return self._child(self._agents.get(agent_id), f"{Operation.EXECUTE_TOOL.value} {tool}", t, {
            gen_ai.GEN_AI_OPERATION_NAME: Operation.EXECUTE_TOOL.value, gen_ai.GEN_AI_TOOL_NAME: tool,
            gen_ai.GEN_AI_TOOL_CALL_ID: call_id, gen_ai.GEN_AI_TOOL_TYPE: "function",
            gen_ai.GEN_AI_AGENT_ID: str(agent_id),
        })

    def _end_call(self, event: ToolCallFinished) -> None:
        span = self._calls.pop((event.agent_id, event.call_id), None)
        if span is None:  # not executed: refused for the budget, an unknown tool or bad arguments
            span = self._tool_span(event.agent_id, event.call_id, event.tool, event.t)
        span.set_attributes({"kimi_swarm.tool.executed": event.executed, "kimi_swarm.tool.refused": event.refused,
                             "kimi_swarm.tool.attempts": event.attempts})
        if not event.ok:
            kind = "tool_error" if event.executed else ("budget_refused" if event.refused else "not_executed")
            _fail(span, kind, event.error or kind)
        span.end(end_time=self._ns(event.t))

    def _budget(self, event: BudgetLeft) -> None:
        if self._run is None:
            return
        left = {"kimi_swarm.budget.tool_calls_left": event.tool_calls, "kimi_swarm.budget.agents_left": event.agents}
        if event.tokens is not None:
            left["kimi_swarm.budget.tokens_left"] = event.tokens
        self._run.add_event("budget_left", left, timestamp=self._ns(event.t))
        self._run.set_attributes(left)

    def _end_agent(self, event: AgentFinished) -> None:
        self._cut_off(event.t, f"agent {event.status}", agent_id=event.agent_id)
        span = self._agents.pop(event.agent_id, None)
        if span is None:
            return
        span.set_attributes({"kimi_swarm.status": event.status, "kimi_swarm.steps": event.steps,
                             "kimi_swarm.tool_calls": event.tool_calls})
        if event.status in FAILED_STATUSES:
            _fail(span, event.status, event.result)
        span.end(end_time=self._ns(event.t))

    def _end_run(self, event: RunFinished) -> None:
        self._cut_off(event.t, f"run {event.status}")
        if self._run is None:
            return
        self._run.set_attributes({"kimi_swarm.status": event.status, "kimi_swarm.partial": event.partial,
                                  **{f"kimi_swarm.usage.{k}": v for k, v in event.usage.items()}})
        if event.stop_reason is not None:
            self._run.set_attribute("kimi_swarm.stop_reason", event.stop_reason)
        if event.status in FAILED_STATUSES:
            _fail(self._run, event.status, event.answer)
        self._run.end(end_time=self._ns(event.t))
        self._run = None

    def _cut_off(self, t: float | None, reason: str, agent_id: int | None = None) -> None:
        """End, as errors, the turns and calls still open (of one agent; with no agent, of every agent, and the
        agents too): the deadline, a cancel or a failure cut them off."""
        spans = [self._turns.pop(key) for key in list(self._turns) if agent_id in (None, key)]
        spans += [self._calls.pop(key) for key in list(self._calls) if agent_id in (None, key[0])]
        if agent_id is None:
            spans += [self._agents.pop(key) for key in list(self._agents)]
        for span in spans:
            _fail(span, "cut_off", f"cut off: {reason}")
            span.end(end_time=self._ns(t))


def _fail(span: trace.Span, error_type: str, description: str) -> None:
    span.set_attribute(ERROR_TYPE, error_type)
    span.set_status(trace.Status(trace.StatusCode.ERROR, description))


@contextmanager
def otlp_tracer() -> Iterator[OtelTracer]:
    """An OtelTracer that exports over OTLP/HTTP where the standard environment variables say
    (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS, ...; OTEL_SERVICE_NAME overrides the service
    name kimi-swarm); every span is sent before the block ends."""
    resource = Resource.create({SERVICE_NAME: WORKFLOW_NAME}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracer = OtelTracer(provider)
    try:
        yield tracer
    finally:
        tracer.close()
        provider.shutdown()
