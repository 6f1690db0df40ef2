"""An OpenAI-compatible HTTP server over the inference engine (`task=serve`).

    config.py      ServeConfig: address, key and limits (cheap: imported when tasks register)
    errors.py      OpenAI's error envelope and the handlers that produce it
    schemas.py     request bodies, validated strictly (unknown fields are refused)
    admission.py   how many requests generate at once, how many may wait
    middleware.py  body size limit and API key, checked before a body is parsed
    engine_bridge.py  sampling options for the engine; its blocking handles as async streams
    responses.py   response bodies and SSE chunks
    app.py         create_app(engine, config): the FastAPI routes
    server.py      uvicorn with graceful shutdown

Only `config` is imported at CLI start-up; FastAPI is imported when a server is built.
"""
