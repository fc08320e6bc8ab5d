"""OpenTelemetry spans of real runs against the loopback fake server: the SDK's in-memory exporter, and
`swarm run --otel` exporting over OTLP/HTTP to a loopback receiver."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fake_openai import Counter as CallCounter
from fake_openai import FakeOpenAI, FakeReply, counting_lookup, swarm_script
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from typer.testing import CliRunner

from kimi_swarm import BudgetLeft, Swarm, tool
from kimi_swarm.backend.chat.openai_backend import OpenAIBackend
from kimi_swarm.cli import app
from kimi_swarm.telemetry import OtelTracer
from kimi_swarm.tools import ToolError

INSTALL_HINT = "pip install 'kimi-swarm[otel]'"


@tool
async def lookup(query: str) -> str:
    """Looks a query up.

    Args:
        query: What to look up.
    """
    if "broken" in query:
        raise ToolError("the site is down")
    return f"Fact about {query}. Source: http://facts.test/{query.replace(' ', '-')}"


def three_calls(request, task, results):
    """Two calls, then one more (gamma's second call fails), then an answer: 3 agents ask for 9 calls."""
    if not results:
        second = f"{task} broken" if task == "gamma" else f"{task} 2"
        return FakeReply(tool_calls=[("lookup", {"query": f"{task} 1"}), ("lookup", {"query": second})])
    if len(results) == 2:
        return FakeReply(tool_calls=[("lookup", {"query": f"{task} 3"})], prompt_tokens=17, completion_tokens=3)
    return FakeReply(content=f"{task}: {results[0][:40]}", prompt_tokens=23, completion_tokens=11)


def traced_run(script, tools, **limits):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with FakeOpenAI(script, delay=0.02) as server:
        swarm = Swarm(OpenAIBackend(server.base_url, "fake-model"), tools, **limits)
        swarm.add_listener(OtelTracer(provider))
        before = time.time_ns()
        result = swarm.run_sync("Research the facts.")
        after = time.time_ns()
    return result, list(exporter.get_finished_spans()), (before, after)


def operation(span: ReadableSpan) -> str:
    return span.attributes["gen_ai.operation.name"]


def test_a_run_is_a_span_tree_of_agents_model_turns_and_tool_calls_with_genai_attributes():
    result, spans, (before, after) = traced_run(swarm_script([["alpha", "beta", "gamma"]], three_calls),
                                                [lookup], max_tool_calls=8)
    by_id = {span.context.span_id: span for span in spans}
    parent = {span.context.span_id: by_id.get(span.parent.span_id) if span.parent else None for span in spans}

    runs = [s for s in spans if s.parent is None]
    assert len(runs) == 1 and operation(runs[0]) == "invoke_workflow"
    run = runs[0]
    assert before <= run.start_time <= run.end_time <= after
    assert len({s.context.trace_id for s in spans}) == 1

    agents = [s for s in spans if operation(s) == "invoke_agent"]
    assert sorted(s.attributes["gen_ai.agent.id"] for s in agents) == ["0", "1", "2", "3"]
    assert all(parent[s.context.span_id] is run for s in agents)
    agent_span = {s.attributes["gen_ai.agent.id"]: s for s in agents}
    assert agent_span["0"].attributes["gen_ai.agent.name"] == "orchestrator"
    assert agent_span["3"].attributes["gen_ai.agent.description"] == "gamma"
    assert agent_span["3"].attributes["kimi_swarm.wave"] == 1

    chats = [s for s in spans if operation(s) == "chat"]
    tools = [s for s in spans if operation(s) == "execute_tool"]
    assert len(spans) == 1 + len(agents) + len(chats) + len(tools)
    assert len(chats) == result.usage.model_calls == 2 + 3 * 3
    for record in [result.orchestrator, *result.agents]:
        mine = agent_span[str(record.id)]
        my_chats = [s for s in chats if parent[s.context.span_id] is mine]
        my_tools = [s for s in tools if parent[s.context.span_id] is mine]
        assert len(my_chats) == record.steps
        assert [s.attributes["gen_ai.tool.call.id"] for s in sorted(my_tools, key=lambda s: s.start_time)] == [
            c.call_id for c in record.tool_calls]
    assert len(tools) == 9 and {s.attributes["gen_ai.tool.name"] for s in tools} == {"lookup"}
    assert all(s.name == "chat fake-model" and s.attributes["gen_ai.request.model"] == "fake-model" for s in chats)

    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in chats) == result.usage.prompt_tokens
    assert sum(s.attributes["gen_ai.usage.output_tokens"] for s in chats) == result.usage.completion_tokens
    assert result.usage.prompt_tokens == 2 * 10 + 3 * (10 + 17 + 23)
    reasons = Counter(tuple(s.attributes["gen_ai.response.finish_reasons"]) for s in chats)
    assert reasons == {("stop",): 4, ("tool_calls",): 7}

    for span in spans:  # real times, every child inside its parent
        assert span.start_time <= span.end_time
        above = parent[span.context.span_id]
        if above is not None:
            assert above.start_time <= span.start_time and span.end_time <= above.end_time
    assert all(s.end_time - s.start_time >= 15_000_000 for s in chats)  # the server takes 20 ms a reply

    errors = [s for s in spans if s.status.status_code is StatusCode.ERROR]
    assert {s.attributes["error.type"] for s in errors} == {"tool_error", "budget_refused"} and len(errors) == 2
    failed = next(s for s in errors if s.attributes["error.type"] == "tool_error")
    assert "the site is down" in failed.status.description
    assert parent[failed.context.span_id] is agent_span["3"]
    failed_record = next(c for c in result.agents[2].tool_calls if c.executed and not c.ok)
    assert failed.attributes["gen_ai.tool.call.id"] == failed_record.call_id
    refused = next(s for s in errors if s.attributes["error.type"] == "budget_refused")
    assert refused.attributes["kimi_swarm.tool.executed"] is False and refused.start_time == refused.end_time
    assert sum(not c.executed for a in result.agents for c in a.tool_calls) == 1

    assert run.attributes["kimi_swarm.budget.tool_calls_left"] == 0
    assert run.attributes["kimi_swarm.budget.agents_left"] == 100 - 3
    assert run.attributes["kimi_swarm.usage.tool_calls"] == result.usage.tool_calls == 8
    assert run.attributes["kimi_swarm.stop_reason"] == result.stop_reason == "budget"
    budget_events = [e for e in run.events if e.name == "budget_left"]
    assert len(budget_events) == sum(isinstance(e, BudgetLeft) for e in result.trace)
    assert all(run.start_time <= e.timestamp <= run.end_time for e in budget_events)


def test_calls_cut_off_by_the_deadline_still_end_as_errors():
    counter = CallCounter()

    def stuck(request, task, results):
        return FakeReply(tool_calls=[("lookup", {"query": task})])

    result, spans, _ = traced_run(swarm_script([["slow one", "slow two"]], stuck),
                                  [counting_lookup(counter, seconds=30)], deadline=1.0)

    assert result.stop_reason == "deadline"
    tools = [s for s in spans if operation(s) == "execute_tool"]
    assert len(tools) == 2
    assert all(s.status.status_code is StatusCode.ERROR and s.attributes["error.type"] == "cut_off" for s in tools)
    sub_agents = [s for s in spans if operation(s) == "invoke_agent" and s.attributes["gen_ai.agent.id"] != "0"]
    assert [s.attributes["kimi_swarm.status"] for s in sub_agents] == ["deadline", "deadline"]
    assert all(s.status.status_code is StatusCode.ERROR for s in sub_agents)
    run = next(s for s in spans if s.parent is None)
    assert run.end_time - run.start_time < 3e9


class OtlpReceiver:
    """A loopback OTLP/HTTP collector: keeps every trace export it is sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.paths.append(self.path)
                receiver.requests.append(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: object) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def answering(request, task, results):
    if not results:
        return FakeReply(tool_calls=[("lookup", {"query": task})])
    return FakeReply(content=f"{results[0]} [http://facts.test/{task}]")


def cli_run(server: FakeOpenAI, *args: str, env: dict[str, str] | None = None):
    runner = CliRunner(env={"COLUMNS": "200", **(env or {})})
    return runner.invoke(app, ["run", "Find the facts.", "--base-url", server.base_url, "--model", "fake",
                               "--web", "none", "--tools-from", "fake_openai:CLI_TOOLS", *args])


def test_swarm_run_otel_exports_the_span_tree_over_otlp_where_the_environment_says():
    with OtlpReceiver() as receiver, FakeOpenAI(swarm_script([["alpha", "beta"]], answering)) as server:
        outcome = cli_run(server, "--otel", env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                                 "OTEL_SERVICE_NAME": "swarm-under-test"})

    assert outcome.exit_code == 0, outcome.output
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    resource_spans = [rs for request in receiver.requests for rs in request.resource_spans]
    services = {a.value.string_value for rs in resource_spans for a in rs.resource.attributes
                if a.key == "service.name"}
    assert services == {"swarm-under-test"}
    spans = [span for rs in resource_spans for scope in rs.scope_spans for span in scope.spans]
    names = Counter(span.name for span in spans)
    assert names == {"invoke_workflow kimi-swarm": 1, "invoke_agent orchestrator": 1, "invoke_agent sub-agent 1": 1,
                     "invoke_agent sub-agent 2": 1, "chat fake": 2 + 2 * 2, "execute_tool lookup": 2}
    ids = {span.span_id: span for span in spans}
    run = next(span for span in spans if not span.parent_span_id)
    for span in spans:
        if span.name.startswith("invoke_agent"):
            assert span.parent_span_id == run.span_id
        elif span is not run:
            assert ids[span.parent_span_id].name.startswith("invoke_agent")


def test_asking_for_traces_without_the_otel_extra_names_the_extra(monkeypatch):
    for name in ["opentelemetry.sdk", *(m for m in sys.modules if m.startswith("opentelemetry.sdk."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as if opentelemetry-sdk were not installed
    monkeypatch.delitem(sys.modules, "kimi_swarm.telemetry")
    with pytest.raises(ImportError, match=r"pip install 'kimi-swarm\[otel\]'"):
        import kimi_swarm.telemetry  # noqa: F401
    monkeypatch.delitem(sys.modules, "kimi_swarm.telemetry", raising=False)
    with FakeOpenAI(swarm_script([["alpha"]], answering)) as server:
        outcome = cli_run(server, "--otel")
    assert outcome.exit_code == 1
    assert INSTALL_HINT in outcome.stderr and server.requests == 0


def test_nothing_loads_the_opentelemetry_sdk_unless_tracing_is_asked_for():
    probe = ("import sys, kimi_swarm, kimi_swarm.cli, kimi_swarm.report_html; "
             "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter', "
             "'kimi_swarm.telemetry'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
