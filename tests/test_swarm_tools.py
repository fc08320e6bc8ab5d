"""@tool schemas from signatures and docstrings, argument checking, output rendering, citations."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from kimi_swarm import Tool, as_tool, tool
from kimi_swarm.citations import EvidenceStore, cited_urls, extract_citations, unsupported_urls
from kimi_swarm.function_tools import ToolArgumentsError, parse_docstring, render_output


@tool
async def search_papers(query: str, year: int | None = None, venues: list[str] = [],  # noqa: B006
                        sort: Literal["relevance", "date"] = "relevance") -> list[str]:
    """Search the paper index.

    Finds papers whose title or abstract match.

    Args:
        query: Words to look for,
            in any order.
        year (int): Only papers from this year.
        venues: Conference names.
        sort: Result order.

    Returns:
        Titles.
    """
    return [f"{query} {year} {venues} {sort}"]


def test_schema_comes_from_the_signature_and_the_google_docstring():
    assert search_papers.name == "search_papers"
    assert search_papers.description == "Search the paper index.\n\nFinds papers whose title or abstract match."
    schema = search_papers.parameters
    assert schema["required"] == ["query"] and schema["additionalProperties"] is False
    properties = schema["properties"]
    assert properties["query"] == {"type": "string", "description": "Words to look for, in any order."}
    assert properties["year"]["description"] == "Only papers from this year."
    assert {"type": "integer"} in properties["year"]["anyOf"]
    assert properties["venues"]["items"] == {"type": "string"} and properties["venues"]["default"] == []
    assert properties["sort"]["enum"] == ["relevance", "date"]
    assert search_papers.spec.openai_schema()["function"]["name"] == "search_papers"
    assert "Returns" not in str(schema)


async def test_arguments_are_validated_and_converted_before_the_call():
    arguments = search_papers.validate('{"query": "kda", "year": 2025}')
    assert arguments == {"query": "kda", "year": 2025, "venues": [], "sort": "relevance"}
    assert await search_papers.invoke(arguments) == ["kda 2025 [] relevance"]
    with pytest.raises(ToolArgumentsError, match="sort: Input should be 'relevance' or 'date'"):
        search_papers.validate('{"query": "kda", "sort": "random"}')
    with pytest.raises(ToolArgumentsError, match="query: Field required"):
        search_papers.validate("{}")
    with pytest.raises(ToolArgumentsError, match="must be a JSON object, got list"):
        search_papers.validate("[1]")


async def test_sync_functions_bound_methods_and_options():
    class Notebook:
        def __init__(self) -> None:
            self.notes: list[str] = []

        def write(self, text: str) -> int:
            """Keep a note.

            Args:
                text: The note.
            """
            self.notes.append(text)
            return len(self.notes)

    notebook = Notebook()
    write = as_tool(notebook.write)
    assert write.name == "write" and list(write.parameters["properties"]) == ["text"]
    assert not write.is_async and not write.untrusted
    assert await write.invoke(write.validate('{"text": "hi"}')) == 1 and notebook.notes == ["hi"]

    @tool(name="add-numbers", description="Adds.", max_concurrency=3, timeout=5, retries=0)
    def add(a: float, b: float = 1.0) -> float:
        return a + b

    assert isinstance(add, Tool) and add.name == "add-numbers" and add.description == "Adds."
    assert (add.max_concurrency, add.timeout, add.retries) == (3, 5, 0)
    assert as_tool(add) is add


def test_untyped_or_unnameable_functions_are_refused_with_a_reason():
    def untyped(x):
        return x

    def variadic(*args: int) -> int:
        return 0

    with pytest.raises(TypeError, match="parameter 'x' needs a type hint"):
        tool(untyped)
    with pytest.raises(TypeError, match=r"\*args/\*\*kwargs"):
        tool(variadic)
    with pytest.raises(ValueError, match="must be 1-64 letters"):
        tool(name="has space")(lambda: None)
    with pytest.raises(TypeError, match="is not a tool"):
        as_tool(42)


def test_docstring_parser_keeps_sections_apart():
    description, arguments = parse_docstring("""Summary line.

    Args:
        url: The address,
            continued here.
        page (int): Which page.

    Raises:
        ToolError: never mind.
    """)
    assert description == "Summary line."
    assert arguments == {"url": "The address, continued here.", "page": "Which page."}


def test_outputs_render_with_to_text_then_json():
    class Page(BaseModel):
        url: str
        text: str

        def to_text(self) -> str:
            return f"URL: {self.url}\n{self.text}"

    class Plain(BaseModel):
        n: int

    assert render_output(Page(url="http://a.test", text="body")) == "URL: http://a.test\nbody"
    assert render_output([Page(url="http://a.test", text="1"), Page(url="http://b.test", text="2")]) == (
        "URL: http://a.test\n1\n\nURL: http://b.test\n2")
    assert render_output({"pages": [Plain(n=1)]}) == '{"pages": [{"n": 1}]}'
    assert render_output("as is") == "as is"


def test_citations_keep_only_urls_seen_in_tool_results_with_the_best_passage():
    evidence = EvidenceStore()
    evidence.add("Unrelated intro. The Danube flows through ten countries, more than any river. "
                 "Source: https://rivers.test/danube/")
    evidence.add("Page text without its address.", source_url="https://lakes.test/baikal")
    answer = ("The Danube crosses ten countries [https://rivers.test/danube]. Baikal is the deepest lake "
              "[https://lakes.test/baikal, https://made-up.test/x].\nNo brackets: https://rivers.test/danube.")
    assert [url for url, _ in cited_urls(answer)] == [
        "https://rivers.test/danube", "https://lakes.test/baikal", "https://made-up.test/x"]
    citations = extract_citations(answer, evidence)
    assert [c.url for c in citations] == ["https://rivers.test/danube", "https://lakes.test/baikal"]
    assert citations[0].claim == "The Danube crosses ten countries."
    assert citations[0].evidence == (
        "The Danube flows through ten countries, more than any river. Source: https://rivers.test/danube/")
    assert citations[1].evidence == "Page text without its address."
    assert unsupported_urls(answer, evidence) == ["https://made-up.test/x"]
