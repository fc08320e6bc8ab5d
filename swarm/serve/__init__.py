"""`swarm serve`: the in-process engine behind an OpenAI-compatible API, reusing prompt prefixes across requests.

`app` (routes and errors), `schema` (the request), `completions` (a request rendered, run and answered),
`generator` (the engine boundary, over the chat layer's prefix cache), `model` (what is served), `server`
(sockets and uvicorn).
"""
