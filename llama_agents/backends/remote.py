"""Connect to a model server by URL: `connect("http://host:8000/v1#meta-llama/Llama-3.1-8B-Instruct")`.

What it does: parses the URL, finds which engine serves it, checks the model name and builds the
backend (`VLLMBackend`, `OpenAIBackend`, `OllamaBackend` or `LlamaCppBackend`).

- The engine is named by the scheme (`vllm+http://`, `openai+http://`, `ollama+http://`,
  `llamacpp+http://`, also `+https`) or, for a plain `http(s)://` URL, detected by probing, in this
  order (Ollama and llama.cpp also serve `/v1/models`, so their own routes are asked first):
  `GET /api/tags` answering `{"models": [...]}` is Ollama; `GET /props` answering
  `{"default_generation_settings": ...}` is llama.cpp; `GET /v1/models` answering a model list is
  vLLM when a model is `owned_by: "vllm"`, otherwise a generic OpenAI-compatible server.
- A trailing `/v1` (or `/api` for Ollama) in the URL path is the API prefix, not part of the root.
- The model: the `model` argument, else the URL fragment (`#llama3.1:8b`) or `?model=` query, else
  the only model the server serves. A model the server does not list is an error naming the ones
  it does.
- The API key: the argument, else `$LLAMA_AGENTS_API_KEY`, sent as `Authorization: Bearer`.
- The tokenizer (the served model's, Llama 3): a `Tokenizer`, a path, or `$LLAMA_AGENTS_TOKENIZER`.

What it does not do: start servers or download models.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx

from llama_agents.backends._remote import RemoteBackend, RemoteSettings, describe_error
from llama_agents.backends.llamacpp import LlamaCppBackend
from llama_agents.backends.ollama import OllamaBackend
from llama_agents.backends.openai import OpenAIBackend, VLLMBackend
from llama_agents.errors import BackendError, UsageError
from llama_agents.llama.tokenizer import Tokenizer

__all__ = ["API_KEY_ENV", "ENGINES", "TOKENIZER_ENV", "connect", "is_remote_url", "parse_url"]

API_KEY_ENV = "LLAMA_AGENTS_API_KEY"
TOKENIZER_ENV = "LLAMA_AGENTS_TOKENIZER"
ENGINES: dict[str, type[RemoteBackend]] = {
    "vllm": VLLMBackend,
    "openai": OpenAIBackend,
    "ollama": OllamaBackend,
    "llamacpp": LlamaCppBackend,
}


def is_remote_url(value: object) -> bool:
    """Whether `value` is a string naming a model server (`http://`, `vllm+https://`, ...)."""
    if not isinstance(value, str):
        return False
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    kind, _, transport = scheme.rpartition("+")
    return transport in ("http", "https") and (not kind or kind in ENGINES)


def parse_url(url: str) -> tuple[str | None, str, str | None]:
    """`(engine or None, server root URL, model name or None)` of a model-server URL."""
    if "://" not in url:
        raise UsageError(f"model server URL {url!r} has no scheme; write http://host:port")
    scheme, rest = url.split("://", 1)
    kind, _, transport = scheme.lower().rpartition("+")
    if transport not in ("http", "https"):
        raise UsageError(f"model server URL {url!r}: the scheme must be http(s), optionally engine+http(s)")
    if kind and kind not in ENGINES:
        raise UsageError(f"model server URL {url!r}: unknown engine {kind!r}; choose from {_names()}")
    parts = urlsplit(f"{transport}://{rest}")
    if not parts.hostname:
        raise UsageError(f"model server URL {url!r} names no host")
    model = parts.fragment or None
    if model is None:
        model = (parse_qs(parts.query).get("model") or [None])[0]
    path = parts.path.rstrip("/")
    for suffix in ("/v1", "/api"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    root = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return kind or None, root, model


def connect(
    url: str,
    *,
    tokenizer: Tokenizer | str | os.PathLike[str] | None = None,
    model: str | None = None,
    api_key: str | None = None,
    engine: str | None = None,
    settings: RemoteSettings | None = None,
    probe: bool = True,
    transport: httpx.BaseTransport | None = None,
    max_seq_len: int | None = None,
    extra_body: dict[str, Any] | None = None,
) -> RemoteBackend:
    """A backend for the model server at `url` (see the module docstring for how it is read).

    `engine` names the engine (overrides the scheme). `probe=False` asks the server nothing before
    the first completion (the engine must then be named, and the model too where it needs one).
    `max_seq_len` is the model's context, for servers that do not report it (a prompt that does not
    fit then fails before it is sent); it wins over what the server reports. `extra_body` adds
    fields to every request of an OpenAI-compatible engine (`openai`, `vllm`), e.g. to turn off a
    server's own sampling defaults.
    """
    kind, root, url_model = parse_url(url)
    if engine is not None:
        if engine not in ENGINES:
            raise UsageError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
        kind = engine
    model = model or url_model
    tok = _tokenizer(tokenizer)
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    settings = settings or RemoteSettings()
    if max_seq_len is not None and not (isinstance(max_seq_len, int) and max_seq_len > 0):
        raise UsageError(f"max_seq_len must be a positive int, got {max_seq_len!r}")
    if probe:
        kind, served, reported = _probe(root, kind, api_key, settings, transport)
        model = _pick_model(root, kind, model, served)
        max_seq_len = max_seq_len or reported
    elif kind is None:
        raise UsageError(f"probe=False needs the engine named: write e.g. vllm+{root}")
    if kind in ("ollama", "vllm") and not model:
        raise UsageError(f"the {kind} server at {root} needs a model name: add #name to the URL or model=")
    cls = ENGINES[kind]
    options: dict[str, Any] = {}
    if extra_body:
        if not issubclass(cls, OpenAIBackend):
            raise UsageError(f"extra_body is for OpenAI-compatible engines (openai, vllm), not {kind}")
        options["extra_body"] = extra_body
    return cls(
        root,
        tok,
        model=model,
        api_key=api_key,
        settings=settings,
        max_seq_len=max_seq_len,
        transport=transport,
        **options,
    )


def _names() -> str:
    return ", ".join(ENGINES)


def _tokenizer(value: Tokenizer | str | os.PathLike[str] | None) -> Tokenizer:
    if isinstance(value, Tokenizer):
        return value
    path = value or os.environ.get(TOKENIZER_ENV) or None
    if path is None:
        raise UsageError(
            "a remote model needs the Llama 3 tokenizer of the served model: pass tokenizer= "
            f"(a path to tokenizer.model) or set {TOKENIZER_ENV}=/path/to/tokenizer.model"
        )
    if not os.path.isfile(path) and "://" not in str(path):
        raise UsageError(f"tokenizer {str(path)!r} is not a file (the Llama 3 tokenizer.model)")
    return Tokenizer(path)


def _probe(
    root: str,
    kind: str | None,
    api_key: str | None,
    settings: RemoteSettings,
    transport: httpx.BaseTransport | None,
) -> tuple[str, list[str] | None, int | None]:
    """(engine, served model names or None when unknown, context length or None)."""
    headers = {"User-Agent": "llama-agents"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    # connect_timeout bounds only opening the connection; a busy server may take longer to answer
    # (read_timeout), as for completions.
    timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
    with httpx.Client(headers=headers, timeout=timeout, transport=transport) as client:

        def get(path: str) -> Any:
            try:
                response = client.get(root + path)
            except httpx.TransportError as e:
                raise BackendError(f"cannot reach the model server at {root} ({e}); is it running?") from e
            if response.status_code in (401, 403):
                raise UsageError(
                    f"the model server at {root} rejected the credentials (HTTP {response.status_code}: "
                    f"{_message(response)}); pass api_key= or set {API_KEY_ENV}"
                )
            if response.status_code != 200:
                return None
            try:
                return response.json()
            except ValueError:
                return None

        if kind in (None, "ollama"):
            tags = get("/api/tags")
            if isinstance(tags, dict) and isinstance(tags.get("models"), list):
                names = [m.get("name") for m in tags["models"] if isinstance(m, dict)]
                names = [n for n in names if isinstance(n, str)]
                return "ollama", names, None
        if kind in (None, "llamacpp"):
            props = get("/props")
            if isinstance(props, dict) and isinstance(props.get("default_generation_settings"), dict):
                n_ctx = props["default_generation_settings"].get("n_ctx")
                return "llamacpp", None, n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None
        if kind in (None, "vllm", "openai"):
            listing = get("/v1/models")
            if isinstance(listing, dict) and isinstance(listing.get("data"), list):
                models = [m for m in listing["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)]
                found = kind or ("vllm" if any(m.get("owned_by") == "vllm" for m in models) else "openai")
                lengths = {m["id"]: m.get("max_model_len") for m in models}
                return found, [m["id"] for m in models], _ContextLengths(lengths).first()
    if kind is not None:
        return kind, None, None  # named engine without the listing route: trust the name
    raise UsageError(
        f"the server at {root} answers none of /api/tags (Ollama), /props (llama.cpp) or /v1/models "
        "(OpenAI-compatible); name the engine in the URL, e.g. openai+" + root
    )


class _ContextLengths:
    def __init__(self, lengths: dict[str, Any]) -> None:
        self.lengths = {k: v for k, v in lengths.items() if isinstance(v, int) and v > 0}

    def first(self) -> int | None:
        return min(self.lengths.values()) if self.lengths else None


def _pick_model(root: str, kind: str, model: str | None, served: list[str] | None) -> str | None:
    if served is None:
        return model
    if model is None:
        if len(served) == 1:
            return served[0]
        if not served:
            hint = " (run `ollama pull llama3.1` first)" if kind == "ollama" else ""
            raise UsageError(f"the {kind} server at {root} serves no model{hint}")
        raise UsageError(
            f"the {kind} server at {root} serves several models; name one with #name in the URL or "
            f"model=: {', '.join(served)}"
        )
    if model in served or (kind == "ollama" and ":" not in model and f"{model}:latest" in served):
        return model
    listed = ", ".join(served) or "none"
    raise UsageError(f"the {kind} server at {root} does not serve the model {model!r}; it serves: {listed}")


def _message(response: httpx.Response) -> str:
    try:
        return describe_error(response.json())
    except ValueError:
        return response.text[:300]
