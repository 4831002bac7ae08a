"""An OpenAI-compatible chat-completions client on `httpx`, and the prompt files.

`ChatClient.chat` POSTs `{base_url}/chat/completions` and returns the first choice's message content.
Transport failures (connection errors, timeouts, HTTP 429 and 5xx, a reply without a message) are
retried `max_retries` times with exponential backoff (`backoff_s`, doubling); other HTTP errors (400,
401, 404, ...) raise at once. `ChatClient.chat_json` extracts a JSON value from the reply, validates it
with a caller's function, and on an invalid reply asks again (telling the model what was wrong) up to
`attempts` times. Every failure raises `LLMError` naming the request (`where`) and the last problem.

Credentials: the bearer token goes to `base_url` only. Redirects are never followed (a redirect is
refused with an error naming where it pointed, so a token can never travel to another host), and the
token (and a password in the base URL) is redacted from every error message, however the server echoed it.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

import httpx

from leakage.errors import UserError

T = TypeVar("T")


class LLMError(UserError, RuntimeError):
    """An LLM request failed for good (after retries), or its replies never validated."""


@dataclass(frozen=True)
class LLMConfig:
    """base_url: the API root, e.g. "http://127.0.0.1:8000/v1" (the client appends /chat/completions).

    api_key_env: name of the environment variable holding a bearer token (unset or empty: no header).
    """

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 2.0
    temperature: float = 0.0
    max_tokens: int | None = None

    def __post_init__(self):
        if not re.match(r"https?://", self.base_url):
            raise ValueError(f"base_url must start with http:// or https://, got {redact_url(self.base_url)!r}")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0:
            raise ValueError("timeout_s must be > 0, max_retries and backoff_s >= 0")


def redact_url(url: str) -> str:
    """`url` with the password of its user info (`http://user:password@host`) replaced by '***'."""
    password = urlsplit(url).password
    return url.replace(f":{password}@", ":***@") if password else url


_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class ChatClient:
    """OpenAI-compatible chat client (module docstring). `sleep` is injectable so tests need not wait."""

    def __init__(self, config: LLMConfig, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self._sleep = sleep
        self.requests_sent = 0

    @property
    def url(self) -> str:
        return self.config.base_url.rstrip("/") + "/chat/completions"

    def _key(self) -> str:
        return os.environ.get(self.config.api_key_env, "") if self.config.api_key_env else ""

    def redact(self, text: str) -> str:
        """`text` with the bearer token and a password in the base URL replaced by '***' (error messages must
        never carry them)."""
        for secret in (self._key(), urlsplit(self.config.base_url).password):
            if secret:
                text = text.replace(secret, "***")
        return text

    def chat(self, messages: list[dict], where: str = "request") -> str:
        """The reply text of one chat completion, with transport retries."""
        c = self.config
        body = {"model": c.model, "messages": messages, "temperature": c.temperature}
        if c.max_tokens is not None:
            body["max_tokens"] = c.max_tokens
        headers = {"Content-Type": "application/json"}
        if self._key():
            headers["Authorization"] = f"Bearer {self._key()}"
        problem = ""
        with httpx.Client(timeout=c.timeout_s, follow_redirects=False, trust_env=False) as http:
            for attempt in range(c.max_retries + 1):
                if attempt:
                    self._sleep(c.backoff_s * 2 ** (attempt - 1))
                self.requests_sent += 1
                try:
                    response = http.post(self.url, json=body, headers=headers)
                except httpx.TimeoutException as err:
                    problem = f"timed out contacting {self.url} ({type(err).__name__})"
                    continue
                except httpx.TransportError as err:
                    problem = f"{type(err).__name__} contacting {self.url}: {err}"
                    continue
                if response.is_redirect:
                    raise LLMError(self.redact(
                        f"{where}: {self.url} answered HTTP {response.status_code}, a redirect to "
                        f"{response.headers.get('location', '?')!r}; redirects are not followed (the API key would "
                        "travel with them): point --llm-base-url at the final address"))
                if response.status_code != 200:
                    problem = f"HTTP {response.status_code} from {self.url}: {response.text[:300]}"
                    if response.status_code in _RETRYABLE_STATUS:
                        continue
                    raise LLMError(self.redact(f"{where}: {problem}"))
                try:
                    content = response.json()["choices"][0]["message"]["content"]
                    if not isinstance(content, str):
                        raise TypeError("message content is not a string")
                    return content
                except (ValueError, KeyError, IndexError, TypeError) as err:
                    problem = f"malformed chat-completion reply ({err}): {response.text[:200]!r}"
        raise LLMError(self.redact(f"{where}: failed after {c.max_retries + 1} attempts; last problem: {problem}"))

    def chat_json(self, messages: list[dict], validate: Callable[[Any], T], attempts: int = 3,
                  where: str = "request") -> T:
        """Ask until a reply holds JSON that `validate` accepts (it raises ValueError otherwise)."""
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        conversation = list(messages)
        problem = ""
        for _ in range(attempts):
            reply = self.chat(conversation, where=where)
            try:
                return validate(extract_json(reply))
            except ValueError as err:
                problem = self.redact(str(err))
            conversation = [*messages, {"role": "assistant", "content": reply},
                            {"role": "user", "content": f"Your reply was invalid: {problem}. "
                                                        "Reply again with the JSON only."}]
        raise LLMError(f"{where}: no valid JSON after {attempts} replies; last problem: {problem}")


def extract_json(text: str) -> Any:
    """The first JSON object or array in a reply: after any <think>...</think>, inside a ```json fence if any.

    Raises ValueError when there is none.
    """
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S)
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    if fenced:
        text = fenced.group(1)
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
            return value
        except json.JSONDecodeError:
            continue
    raise ValueError(f"no JSON object in the reply: {text[:120]!r}")


def load_prompt(name: str) -> str:
    """A prompt template shipped in leakage/pipeline/prompts/."""
    path = resources.files("leakage.pipeline") / "prompts" / name
    if not path.is_file():
        raise FileNotFoundError(f"no prompt file {name!r} in leakage/pipeline/prompts/")
    return path.read_text(encoding="utf-8")


def render_prompt(template: str, **values: str) -> str:
    """Fill {{name}} placeholders; raises if one is missing or unused, so a typo never goes unnoticed."""
    wanted = set(re.findall(r"\{\{(\w+)\}\}", template))
    if wanted != set(values):
        raise KeyError(f"prompt placeholders {sorted(wanted)} but values for {sorted(values)}")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)
