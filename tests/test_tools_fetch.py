"""fetch against real loopback servers: extraction, links, redirects, caps, charsets, paging and the shared cache."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import lxml.html
import pytest
from tools_support import Handler, LoopbackSite, minimal_pdf, page, redirect, respond

from kimi_swarm.tools import ToolError, Web, WebConfig

ARTICLE = """<!doctype html><html><head><title>Tide pools of Brittany</title></head><body>
<nav><a href="/">Home</a> | <a href="/shop">Shop</a> | <a href="/login">Log in to your account</a></nav>
<div class="sidebar"><h3>Trending now</h3><ul><li><a href="/x">Celebrity gossip roundup</a></li></ul></div>
<article><h1>Tide pools of Brittany</h1>
<p>At low tide the granite shelves near Roscoff expose pools full of anemones, blennies and shore crabs.
Visitors should step only on bare rock and turn stones back the way they found them.</p>
<p>The best pools lie on the seaward edge, where the water is renewed twice a day by the Atlantic swell,
and the spring tides of March and September uncover the lowest shelves.</p>
</article>
<footer>Copyright 2024 Coastal Media Group. Cookie settings. Privacy policy.</footer>
<script>document.write("tracking pixel script text")</script></body></html>"""

KEEPING = """<!doctype html><html><head><title>Lighthouse keeping</title>{base}</head><body>
<nav><a href="/">Home</a></nav>
<article><h1>Lighthouse keeping<a class="headerlink" href="#top" title="Permalink to this heading">¶</a></h1>
<p>The keeper trims the wick every evening, as the <a href="lamps.html">lamp manual</a> explains, and logs the
weather in the <a href="../logbook/2024.html">logbook</a>, which the <a href="/guild/rules.html">guild rules</a>
require; the <a href="#fog-signals">fog signals</a> section below says when to sound the horn, and the
<a href="?view=print">printable view</a> and the <a href="//charts.example/north-sea">sea charts</a> help too.
Questions go to <a href="mailto:keeper@example.org">the keeper</a>; the <a href="javascript:void(0)">menu
button</a> and the <a href=" JavaScript:alert(1)">alert link</a> do nothing outside a browser.</p>
<h2 id="fog-signals">Fog signals<a class="headerlink" href="#fog-signals" title="Permalink to this heading">¶</a></h2>
<p>In fog the horn sounds twice every minute until the keeper sees the breakwater light again from the gallery.</p>
</article></body></html>"""
MARKDOWN_LINK = re.compile(r"\]\(<?([^()<>\s]+)>?\)")
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")

CYRILLIC = "Привет, мир! Это страница о погоде в Москве и Санкт-Петербурге, написанная в кодировке windows-1251."


def slow_body(request: BaseHTTPRequestHandler) -> None:
    request.send_response(200)
    request.send_header("Content-Type", "text/plain")
    request.send_header("Content-Length", "1000")
    request.end_headers()
    for _ in range(100):
        request.wfile.write(b"x")
        request.wfile.flush()
        time.sleep(0.1)


def huge_declared(request: BaseHTTPRequestHandler) -> None:
    request.send_response(200)
    request.send_header("Content-Type", "text/plain")
    request.send_header("Content-Length", str(10**10))
    request.end_headers()
    request.wfile.write(b"y" * 65536)


def endless_body(request: BaseHTTPRequestHandler) -> None:
    request.send_response(200)
    request.send_header("Content-Type", "text/plain")
    request.send_header("Transfer-Encoding", "chunked")
    request.end_headers()
    chunk = b"a" * 65536
    for _ in range(10_000):
        request.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))


def counted_slowly(request: BaseHTTPRequestHandler) -> None:
    time.sleep(0.3)
    respond(
        request, "<html><body><article><p>" + "Shared result for every agent. " * 20 + "</p></article></body></html>"
    )


LONG_TEXT = "\n\n".join(f"Paragraph {n}: " + "lorem ipsum dolor sit amet " * 20 for n in range(60))

ROUTES = {
    "/article": page(ARTICLE),
    "/r1": redirect("/r2"),
    "/r2": redirect("/r3", 301),
    "/r3": redirect("/article", 307),
    "/loop": redirect("/loop"),
    "/slow": slow_body,
    "/huge-declared": huge_declared,
    "/endless": endless_body,
    "/gzip-bomb": lambda request: respond(
        request, gzip.compress(b"a" * 5_000_000), "text/plain", headers={"Content-Encoding": "gzip"}
    ),
    "/image.png": page(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "image/png"),
    "/cp1251-says-utf8": page(
        f"<html><body><article><p>{CYRILLIC}</p></article></body></html>".encode("cp1251"), "text/html; charset=utf-8"
    ),
    "/utf8-says-latin1": page(
        "Crème brûlée, naïve café, São Paulo, Zürich.".encode(), "text/plain; charset=iso-8859-1"
    ),
    "/latin1": page("Crème brûlée à la française".encode("latin-1"), "text/plain; charset=iso-8859-1"),
    "/data.json": page(json.dumps({"name": "kimi", "layers": [1, 2, 3]}), "application/json"),
    "/doc.pdf": page(minimal_pdf("Quarterly report of the harbour office"), "application/pdf"),
    "/long.txt": page(LONG_TEXT, "text/plain; charset=utf-8"),
    "/shared": counted_slowly,
    "/missing": lambda r: respond(r, "<h1>gone</h1>", status=404),
    "/moved/keeping": redirect("/docs/guide/keeping.html"),
    "/docs/guide/keeping.html": page(KEEPING.format(base="")),
    "/docs/guide/mirrored.html": page(KEEPING.format(base='<base href="https://mirror.example/archive/v2/">')),
    "/docs/guide/shared.html": page(KEEPING.format(base='<base href="../shared/">')),
    "/fragment.html": page("<p>This page moved to the harbour office.</p>"),
}


@pytest.fixture(scope="module")
def site():
    with LoopbackSite(ROUTES) as served:
        yield served


@pytest.fixture
async def web(site):
    async with Web(
        WebConfig(allowed_hosts=[site.host], timeout_s=2, max_bytes=2_000_000, page_chars=4000, per_host_rate=1000)
    ) as tools:
        yield tools


async def test_article_keeps_main_content_and_drops_boilerplate(web, site):
    result = await web.fetch(site.url("/article"))
    assert "granite shelves near Roscoff" in result.text
    assert "spring tides of March" in result.text
    for boilerplate in ("Log in to your account", "Celebrity gossip", "Cookie settings", "tracking pixel"):
        assert boilerplate not in result.text
    assert result.title == "Tide pools of Brittany"
    assert result.content_type == "text/html"


async def test_redirect_chain_reports_final_url(web, site):
    result = await web.fetch(site.url("/r1"))
    assert result.url == site.url("/article")
    assert result.requested_url == site.url("/r1")
    assert "anemones" in result.text


async def test_redirect_loop_is_bounded(web, site):
    with pytest.raises(ToolError, match="redirected more than 5 times"):
        await web.fetch(site.url("/loop"))


async def test_slow_response_hits_the_deadline(web, site):
    started = time.monotonic()
    with pytest.raises(ToolError, match="longer than 2 s"):
        await web.fetch(site.url("/slow"))
    assert time.monotonic() - started < 4


async def test_huge_declared_length_is_refused_before_download(web, site):
    with pytest.raises(ToolError, match="over the 2000000-byte limit"):
        await web.fetch(site.url("/huge-declared"))


async def test_endless_stream_is_stopped_at_the_cap(web, site):
    with pytest.raises(ToolError, match="larger than the 2000000-byte limit"):
        await web.fetch(site.url("/endless"))


async def test_compression_bomb_is_stopped_at_the_decoded_size(web, site):
    with pytest.raises(ToolError, match="larger than the 2000000-byte limit"):
        await web.fetch(site.url("/gzip-bomb"))


async def test_binary_content_is_an_error_not_garbage(web, site):
    with pytest.raises(ToolError, match="image/png"):
        await web.fetch(site.url("/image.png"))


async def test_wrong_charset_declarations_are_corrected(web, site):
    cyrillic = await web.fetch(site.url("/cp1251-says-utf8"))
    assert CYRILLIC in cyrillic.text
    accented = await web.fetch(site.url("/utf8-says-latin1"))
    assert accented.text == "Crème brûlée, naïve café, São Paulo, Zürich."
    latin1 = await web.fetch(site.url("/latin1"))
    assert latin1.text == "Crème brûlée à la française"


async def test_json_is_pretty_printed(web, site):
    result = await web.fetch(site.url("/data.json"))
    assert json.loads(result.text) == {"name": "kimi", "layers": [1, 2, 3]}
    assert '\n  "layers"' in result.text


async def test_pdf_text_is_extracted(web, site):
    result = await web.fetch(site.url("/doc.pdf"))
    assert result.content_type == "application/pdf"
    assert "Quarterly report of the harbour office" in result.text


async def test_long_text_is_paged_never_cut(web, site):
    first = await web.fetch(site.url("/long.txt"))
    assert first.pages > 1 and first.total_chars == len(LONG_TEXT)
    assert "page=2" in first.to_text()
    pages = [first.text] + [(await web.fetch(site.url("/long.txt"), page=n)).text for n in range(2, first.pages + 1)]
    assert "".join(pages) == LONG_TEXT
    assert all(len(text) <= 4000 for text in pages)
    with pytest.raises(ToolError, match=f"has {first.pages} page"):
        await web.fetch(site.url("/long.txt"), page=first.pages + 1)


async def test_twenty_agents_fetching_one_url_make_one_request(web, site):
    before = site.hits["/shared"]
    results = await asyncio.gather(*(web.fetch(site.url("/shared")) for _ in range(20)))
    assert site.hits["/shared"] - before == 1
    assert len({result.text for result in results}) == 1
    await web.fetch(site.url("/shared#section"))
    assert site.hits["/shared"] - before == 1


async def test_http_errors_name_the_status(web, site):
    with pytest.raises(ToolError, match="HTTP 404"):
        await web.fetch(site.url("/missing"))


async def test_per_host_rate_limit_spaces_requests(site):
    config = WebConfig(allowed_hosts=[site.host], per_host_rate=10, per_host_concurrency=2)
    async with Web(config) as web:
        before = site.hits["/shared"]
        site.max_active = 0
        started = time.monotonic()
        await asyncio.gather(*(web.fetch(site.url(f"/shared?agent={n}")) for n in range(5)))
        elapsed = time.monotonic() - started
    assert site.hits["/shared"] - before == 5
    assert elapsed >= 0.4  # five starts at 10/s span at least 0.4 s
    assert site.max_active <= 2


def links(markdown: str) -> list[str]:
    return MARKDOWN_LINK.findall(markdown)


async def test_links_resolve_against_the_final_page_url(web, site):
    result = await web.fetch(site.url("/moved/keeping"))
    assert result.url == site.url("/docs/guide/keeping.html")
    assert links(result.text) == [
        site.url("/docs/guide/lamps.html"),
        site.url("/docs/logbook/2024.html"),
        site.url("/guild/rules.html"),
        site.url("/docs/guide/keeping.html#fog-signals"),
        site.url("/docs/guide/keeping.html?view=print"),
        "http://charts.example/north-sea",
        "mailto:keeper@example.org",
    ]
    assert "menu\nbutton and the alert link do nothing" in result.text
    assert "javascript" not in result.text.lower()
    assert "¶" not in result.text
    assert "\n## Fog signals\n" in result.text


async def test_links_honour_base_href_but_fragments_stay_on_the_page(web, site):
    mirrored = await web.fetch(site.url("/docs/guide/mirrored.html"))
    assert links(mirrored.text) == [
        "https://mirror.example/archive/v2/lamps.html",
        "https://mirror.example/archive/logbook/2024.html",
        "https://mirror.example/guild/rules.html",
        site.url("/docs/guide/mirrored.html#fog-signals"),
        "https://mirror.example/archive/v2/?view=print",
        "https://charts.example/north-sea",
        "mailto:keeper@example.org",
    ]
    shared = await web.fetch(site.url("/docs/guide/shared.html"))
    assert links(shared.text) == [
        site.url("/docs/shared/lamps.html"),
        site.url("/docs/logbook/2024.html"),
        site.url("/guild/rules.html"),
        site.url("/docs/guide/shared.html#fog-signals"),
        site.url("/docs/shared/?view=print"),
        "http://charts.example/north-sea",
        "mailto:keeper@example.org",
    ]


async def test_a_page_that_is_only_a_fragment_is_still_read(web, site):
    result = await web.fetch(site.url("/fragment.html"))
    assert result.text == "This page moved to the harbour office."


def python_docs_routes() -> dict[str, Handler]:
    """Every HTML page of Debian's Python docs at its path, read when asked for (the corpus is 60-odd MB)."""
    return {
        "/" + quote(path.relative_to(PYTHON_DOCS).as_posix()): lambda request, path=path: respond(
            request, path.read_bytes()
        )
        for path in PYTHON_DOCS.rglob("*.html")
    }


@pytest.mark.skipif(
    not (PYTHON_DOCS / "library" / "asyncio-task.html").exists(), reason="Debian's python3.11-doc is not installed"
)
async def test_links_in_the_python_docs_lead_to_the_pages_and_sections_they_name():
    with LoopbackSite(python_docs_routes()) as docs:
        config = WebConfig(allowed_hosts=[docs.host], page_chars=1_000_000, per_host_rate=1000)
        async with Web(config) as web:
            page_url = docs.url("/library/asyncio-task.html")
            result = await web.fetch(page_url)
            found = links(result.text)
            assert result.title == "Coroutines and Tasks"
            assert "¶" not in result.text and "\n## Coroutines\n" in result.text
            assert docs.url("/library/asyncio-eventloop.html#asyncio.get_running_loop") in found
            assert f"{page_url}#asyncio.create_task" in found
            assert all(urlsplit(link).scheme in ("http", "https") for link in found)
            local = [urlsplit(link) for link in found if link.startswith(docs.base + "/")]
            assert len(local) > 100
            own_ids = set(lxml.html.parse(PYTHON_DOCS / "library" / "asyncio-task.html").getroot().xpath("//@id"))
            for link in local:
                assert (PYTHON_DOCS / unquote(link.path).lstrip("/")).is_file(), link.geturl()
                if link.path == "/library/asyncio-task.html":
                    assert link.fragment in own_ids, link.geturl()
            linked_pages = sorted({link._replace(fragment="").geturl() for link in local} - {page_url})
            assert len(linked_pages) > 10
            followed = await asyncio.gather(*(web.fetch(url) for url in linked_pages))
    assert all(page.status == 200 and page.text for page in followed)
    event_loop = followed[linked_pages.index(docs.url("/library/asyncio-eventloop.html"))]
    assert event_loop.title == "Event Loop" and "get_running_loop" in event_loop.text
