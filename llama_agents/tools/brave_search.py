"""`brave_search`: the Llama 3.1 built-in web search tool, over the Brave Search web API.

What it does: send the model's `{"query": ...}` to `GET {base_url}/res/v1/web/search` with the key
in `X-Subscription-Token`, and give the model the top results as compact JSON
(`{"query", "results": [{"title", "url", "description", "age"?}]}`), HTML markup stripped.

Who hears about what goes wrong:
- the developer (raised `ToolConfigurationError`): no key at construction; a key the API rejects
  (401/403, or Brave's 422 `SUBSCRIPTION_TOKEN_INVALID`) at the first call;
- the model (an error `ToolResult`): no results, an empty query, the service down or rate limited
  after the retries, a timeout, an unreadable answer.

What it does not do: fetch the pages behind the results, or use Brave's news, video or local APIs.
"""

from __future__ import annotations

import html
import json
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from llama_agents.errors import ToolConfigurationError, UsageError
from llama_agents.tools._http import HttpSettings, JsonHttpClient, UpstreamError, resolve_api_key
from llama_agents.tools.base import Tool, ToolResult
from llama_agents.types import BuiltinTool

__all__ = ["BraveSearch"]

_TAG = re.compile(r"<[^>]+>")
_KEY_REJECTED_CODES = frozenset({"SUBSCRIPTION_TOKEN_INVALID", "SUBSCRIPTION_NOT_FOUND"})


class _QueryArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] = Field(
        description="The search query."
    )


class BraveSearch(Tool):
    """Web search with the Brave Search API (`brave_search`, a Llama 3.1 built-in tool).

    The key comes from `api_key` or the `BRAVE_SEARCH_API_KEY` environment variable; without one
    the constructor raises `ToolConfigurationError`. `top_k` results (1-20) are returned.
    `extra_params` are added to every request (e.g. `{"country": "de", "safesearch": "strict"}`).
    """

    name = "brave_search"
    description = "Search the web with Brave Search and return the top results (title, URL, description)."
    builtin = BuiltinTool.brave_search
    args_model = _QueryArguments

    ENV_VAR = "BRAVE_SEARCH_API_KEY"
    DEFAULT_BASE_URL = "https://api.search.brave.com"

    def __init__(
        self,
        api_key: str | None = None,
        *,
        top_k: int = 5,
        base_url: str = DEFAULT_BASE_URL,
        http: HttpSettings | None = None,
        extra_params: dict[str, str] | None = None,
    ):
        if not 1 <= top_k <= 20:
            raise UsageError(f"BraveSearch(top_k={top_k}) is out of range: the API returns 1 to 20 results")
        self._api_key = resolve_api_key(
            api_key,
            env=self.ENV_VAR,
            service="Brave Search",
            signup_url="https://api-dashboard.search.brave.com",
        )
        self.top_k = top_k
        self.base_url = base_url.rstrip("/")
        self.extra_params = dict(extra_params or {})
        self._client = JsonHttpClient("Brave Search", key_env=self.ENV_VAR, settings=http)

    async def run(self, arguments: dict[str, Any]) -> ToolResult:
        query: str = arguments["query"]
        params = {**self.extra_params, "q": query, "count": str(self.top_k)}
        try:
            data = await self._client.get_json(
                f"{self.base_url}/res/v1/web/search",
                params=params,
                headers={"X-Subscription-Token": self._api_key, "Accept-Encoding": "gzip"},
            )
        except UpstreamError as e:
            code = _error_code(e.payload)
            if code in _KEY_REJECTED_CODES:
                raise ToolConfigurationError(
                    f"Brave Search rejected the API key ({code}, HTTP {e.status}). Check the key passed to "
                    f"BraveSearch or set in {self.ENV_VAR}."
                ) from e
            return ToolResult.error(str(e))
        return self._compact(query, data)

    def _compact(self, query: str, data: Any) -> ToolResult:
        if not isinstance(data, dict) or data.get("type") == "ErrorResponse":
            return ToolResult.error(
                f"Brave Search gave an unexpected answer: {json.dumps(data)[:300]}", data=data
            )
        web = data.get("web") or {}
        raw_results = web.get("results") if isinstance(web, dict) else None
        results: list[dict[str, str]] = []
        for item in raw_results or []:
            if not isinstance(item, dict) or not item.get("url"):
                continue
            entry = {
                "title": _clean(item.get("title")),
                "url": str(item["url"]),
                "description": _clean(item.get("description")),
            }
            if item.get("age"):
                entry["age"] = _clean(item.get("age"))
            results.append(entry)
            if len(results) == self.top_k:
                break
        if not results:
            return ToolResult.error(
                f"Brave Search found no web results for {query!r}. Try other words.",
                data=data,
            )
        content = json.dumps({"query": query, "results": results}, ensure_ascii=False)
        return ToolResult(content=content, data=data)


def _clean(value: Any) -> str:
    if value is None:
        return ""
    return html.unescape(_TAG.sub("", str(value))).strip()


def _error_code(payload: Any) -> str | None:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        code = payload["error"].get("code")
        return str(code) if code is not None else None
    return None
