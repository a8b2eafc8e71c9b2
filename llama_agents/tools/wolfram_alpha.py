"""`wolfram_alpha`: the Llama 3.1 built-in computation tool, over the Wolfram|Alpha Full Results API.

What it does: send the model's `{"query": ...}` to `GET {base_url}/v2/query?appid=...&input=...
&output=json&format=plaintext` and give the model the answer's pods as compact JSON:
`{"query", "success": true, "pods": [{"title", "primary"?, "subpods": [{"title"?, "plaintext"}]}]}`.
When Wolfram|Alpha does not understand the query the model gets `{"success": false, "didyoumeans",
"tips"}` (whichever are present) as an error result, so it can rephrase.

Who hears about what goes wrong:
- the developer (raised `ToolConfigurationError`): no key at construction; a key the API rejects
  (HTTP 401/403, or the API's error 1 "Invalid appid" / 2 "Appid missing") at the first call;
- the model (an error `ToolResult`): a query not understood, other API errors, the service down
  after the retries, a timeout, an unreadable answer.

What it does not do: fetch images, step-by-step solutions or pod states; only plaintext is asked for.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from llama_agents.errors import ToolConfigurationError, UsageError
from llama_agents.tools._http import HttpSettings, JsonHttpClient, UpstreamError, resolve_api_key
from llama_agents.tools.base import Tool, ToolResult
from llama_agents.types import BuiltinTool

__all__ = ["WolframAlpha"]

_KEY_ERRORS = {"1": "the appid is invalid", "2": "the appid is missing"}


class _QueryArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] = Field(
        description="What to compute or look up, in English or Wolfram Language."
    )


class WolframAlpha(Tool):
    """Computation and facts from Wolfram|Alpha (`wolfram_alpha`, a Llama 3.1 built-in tool).

    The key (an AppID) comes from `api_key` or the `WOLFRAM_ALPHA_API_KEY` environment variable;
    without one the constructor raises `ToolConfigurationError`. At most `max_pods` pods with text
    are returned. `extra_params` are added to every request (e.g. `{"units": "metric"}`).
    Wolfram|Alpha can take several seconds to compute, so the default per-attempt timeout is 30 s.
    """

    name = "wolfram_alpha"
    description = "Compute or look up facts with Wolfram Alpha: math, science, units, data."
    builtin = BuiltinTool.wolfram_alpha
    args_model = _QueryArguments

    ENV_VAR = "WOLFRAM_ALPHA_API_KEY"
    DEFAULT_BASE_URL = "https://api.wolframalpha.com"

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str = DEFAULT_BASE_URL,
        max_pods: int = 10,
        http: HttpSettings | None = None,
        extra_params: dict[str, str] | None = None,
    ):
        if max_pods < 1:
            raise UsageError(f"WolframAlpha(max_pods={max_pods}) must be at least 1")
        self._api_key = resolve_api_key(
            api_key,
            env=self.ENV_VAR,
            service="Wolfram Alpha",
            signup_url="https://developer.wolframalpha.com",
        )
        self.base_url = base_url.rstrip("/")
        self.max_pods = max_pods
        self.extra_params = dict(extra_params or {})
        settings = http or HttpSettings(timeout=30.0, total_timeout=90.0)
        self._client = JsonHttpClient("Wolfram Alpha", key_env=self.ENV_VAR, settings=settings)

    async def run(self, arguments: dict[str, Any]) -> ToolResult:
        query: str = arguments["query"]
        params = {
            **self.extra_params,
            "appid": self._api_key,
            "input": query,
            "output": "json",
            "format": "plaintext",
        }
        try:
            data = await self._client.get_json(f"{self.base_url}/v2/query", params=params)
        except UpstreamError as e:
            return ToolResult.error(str(e))
        return self._compact(query, data)

    def _compact(self, query: str, data: Any) -> ToolResult:
        result = data.get("queryresult") if isinstance(data, dict) else None
        if not isinstance(result, dict):
            return ToolResult.error(
                f"Wolfram Alpha gave an unexpected answer (no queryresult): {json.dumps(data)[:300]}",
                data=data,
            )
        error = result.get("error")
        if isinstance(error, dict):
            code = str(error.get("code", ""))
            message = str(error.get("msg", "")).strip()
            if code in _KEY_ERRORS:
                raise ToolConfigurationError(
                    f"Wolfram Alpha rejected the API key: {_KEY_ERRORS[code]} (error {code}: {message}). "
                    f"Check the AppID passed to WolframAlpha or set in {self.ENV_VAR}."
                )
            return ToolResult.error(
                f"Wolfram Alpha returned error {code}: {message or 'no detail'}", data=data
            )
        if result.get("success") is not True:
            answer: dict[str, Any] = {"query": query, "success": False}
            didyoumeans = [str(d.get("val")) for d in _as_list(result.get("didyoumeans")) if d.get("val")]
            tips = [str(t.get("text")) for t in _as_list(result.get("tips")) if t.get("text")]
            if didyoumeans:
                answer["didyoumeans"] = didyoumeans
            if tips:
                answer["tips"] = tips
            if error is True:
                answer["error"] = "Wolfram Alpha reported an error computing this query"
            return ToolResult(content=json.dumps(answer, ensure_ascii=False), is_error=True, data=data)
        pods = []
        for pod in _as_list(result.get("pods")):
            subpods = []
            for sub in _as_list(pod.get("subpods")):
                text = str(sub.get("plaintext") or "").strip()
                if not text:
                    continue
                entry = {"title": str(sub["title"])} if sub.get("title") else {}
                entry["plaintext"] = text
                subpods.append(entry)
            if not subpods:
                continue
            compact: dict[str, Any] = {"title": str(pod.get("title", ""))}
            if pod.get("primary") is True:
                compact["primary"] = True
            compact["subpods"] = subpods
            pods.append(compact)
            if len(pods) == self.max_pods:
                break
        if not pods:
            return ToolResult.error(
                f"Wolfram Alpha understood {query!r} but returned no text answer. Try asking for a value "
                "rather than a plot.",
                data=data,
            )
        content = json.dumps({"query": query, "success": True, "pods": pods}, ensure_ascii=False)
        return ToolResult(content=content, data=data)


def _as_list(value: Any) -> list[dict[str, Any]]:
    """Wolfram's JSON gives one item as an object and several as a list; always a list of objects."""
    items = value if isinstance(value, list) else [value] if value is not None else []
    return [item for item in items if isinstance(item, dict)]
