"""`fastqwen serve`: one engine behind an OpenAI-compatible `/v1/audio/speech` endpoint.

`app.py` builds the FastAPI app around a loaded engine (`create_app`), `schema.py` is the
request body and how its fields become a `VoiceRequest` and `SamplingParams`, `voices.py`
the voice-clone prompt cache, `audio.py` the response encodings, and `run.py` the command
line. FastAPI and uvicorn come with the `serve` extra; importing this package alone needs
neither, so `fastqwen say` shares `voices.py` without them.
"""
