"""The LLM scorer, compressor and judge against a real HTTP server started here on 127.0.0.1.

The server implements /v1/chat/completions deterministically from the prompt it receives, so the
client's windowing, retries, timeouts and JSON validation run over real sockets.
"""

import json
import re
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from leakage.cli import main
from leakage.pipeline.compress import JudgeLoopConfig, LLMCompressor
from leakage.pipeline.llm import ChatClient, LLMConfig, LLMError
from leakage.pipeline.scoring import LLMScorer, LLMScorerConfig, windows_of
from leakage.memento.trace import read_openmementos
from tests.pipeline_data import synthetic_record, write_jsonl


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that timed out closes its socket: expected
        pass


@contextmanager
def serve(respond, redirect_to=None):
    """Run `respond(body, n) -> (status, text)` behind POST /v1/chat/completions; yields (base_url, requests).

    With `redirect_to`, every request is answered 302 with that Location instead (urllib would follow it
    as a GET, with the Authorization header)."""
    requests, lock = [], threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            body = json.loads(raw)
            with lock:
                requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                n = len(requests)
            if redirect_to is not None:
                self.send_response(302)
                self.send_header("Location", redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, text = respond(body, n)
            if callable(text):
                text = text(dict(self.headers))
            reply = {"choices": [{"message": {"role": "assistant", "content": text}}]}
            payload = json.dumps(reply) if status == 200 else text
            data = payload.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET = _handle

        def log_message(self, *args):
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    finally:
        server.shutdown()
        server.server_close()


def client(url, sleeps=None, **kwargs):
    settings = {"timeout_s": 5.0, "backoff_s": 0.01, **kwargs}
    config = LLMConfig(base_url=url, model="test-model", api_key_env=None, **settings)
    return ChatClient(config, sleep=(sleeps.append if sleeps is not None else time.sleep))


def user_text(body) -> str:
    return body["messages"][1]["content"]


def window_scores(body) -> str:
    """Score boundary j as (j + window length) % 4, so the two passes disagree where their windows differ."""
    ids = [int(j) for j in re.findall(r"<<<BOUNDARY (\d+)>>>", user_text(body))]
    return json.dumps({"scores": [(j + len(ids)) % 4 for j in ids]})


SENTENCES = [f"Sentence number {i} is here. " for i in range(40)]


def expected_scores(n_boundaries, windows=(16, 11)):
    per_pass = []
    for size in windows:
        length = {j: len(w) for w in windows_of(n_boundaries, size) for j in w}
        per_pass.append([(j + length[j]) % 4 for j in range(n_boundaries)])
    return [(a + b) / 2 for a, b in zip(*per_pass)]


def test_scorer_windows_two_passes_and_averages():
    with serve(lambda body, n: (200, window_scores(body))) as (url, requests):
        scores = LLMScorer(client(url)).score_boundaries(SENTENCES)
    assert scores == expected_scores(39)
    assert len(requests) == 3 + 4  # ceil(39 / 16) + ceil(39 / 11)
    assert {r["path"] for r in requests} == {"/v1/chat/completions"}
    assert all(r["body"]["model"] == "test-model" and r["body"]["temperature"] == 0.0 for r in requests)
    first = user_text(requests[0]["body"])
    assert "<<<BOUNDARY 15>>>" in first and "<<<BOUNDARY 16>>>" not in first and "exactly 16 scores" in first


def test_invalid_replies_are_retried_with_the_problem_named():
    def respond(body, n):
        if len(body["messages"]) == 2:  # a first attempt: malformed JSON, or the wrong number of scores
            first = int(re.search(r"<<<BOUNDARY (\d+)>>>", user_text(body)).group(1))
            return 200, 'Sure! {"scores": [1, 2' if first % 2 == 0 else '{"scores": [1]}'
        return 200, window_scores({"messages": body["messages"][:2]})

    with serve(respond) as (url, requests):
        scores = LLMScorer(client(url)).score_boundaries(SENTENCES)
    assert scores == expected_scores(39)
    assert len(requests) == 2 * 7
    corrections = [r["body"]["messages"][-1]["content"] for r in requests if len(r["body"]["messages"]) == 4]
    assert len(corrections) == 7
    assert any("no JSON object" in c for c in corrections) and any("expected exactly" in c for c in corrections)


def test_replies_that_never_validate_raise_naming_the_window():
    def out_of_range(body, n):
        return 200, json.dumps({"scores": [7] * len(re.findall(r"<<<BOUNDARY", user_text(body)))})

    with serve(out_of_range) as (url, requests):
        with pytest.raises(LLMError, match=r"boundary window 0\.\.15 .* no valid JSON after 3 replies.*0, 1, 2, 3"):
            LLMScorer(client(url), LLMScorerConfig(json_attempts=3)).score_boundaries(SENTENCES)
    assert len(requests) == 3


def test_server_errors_are_retried_with_backoff_and_client_errors_are_not():
    sleeps = []
    with serve(lambda body, n: (503, "busy") if n <= 2 else (200, "hello")) as (url, requests):
        assert client(url, sleeps, backoff_s=0.5).chat([{"role": "user", "content": "hi"}]) == "hello"
    assert sleeps == [0.5, 1.0] and len(requests) == 3
    with serve(lambda body, n: (401, '{"error": "bad key"}')) as (url, requests):
        with pytest.raises(LLMError, match="HTTP 401 .*bad key"):
            client(url, []).chat([{"role": "user", "content": "hi"}])
    assert len(requests) == 1


def test_timeouts_are_retried_then_reported():
    def slow(body, n):
        time.sleep(1.0)
        return 200, "too late"

    start = time.monotonic()
    with serve(slow) as (url, requests):
        with pytest.raises(LLMError, match="failed after 2 attempts; last problem: .*timed out"):
            client(url, [], timeout_s=0.2, max_retries=1).chat([{"role": "user", "content": "hi"}])
        assert len(requests) == 2
    assert time.monotonic() - start < 4


def test_the_api_key_never_follows_a_redirect_and_never_appears_in_errors(monkeypatch):
    monkeypatch.setenv("LEAKAGE_TEST_KEY", "sk-secret-123")
    keyed = lambda url: ChatClient(LLMConfig(base_url=url, model="m", api_key_env="LEAKAGE_TEST_KEY",  # noqa: E731
                                             timeout_s=5.0, backoff_s=0.01), sleep=lambda s: None)
    with serve(lambda body, n: (200, "stolen")) as (elsewhere, stolen):  # another origin (another port)
        with serve(None, redirect_to=elsewhere + "/chat/completions") as (url, requests):
            with pytest.raises(LLMError, match="redirect to .* not followed") as err:
                keyed(url).chat([{"role": "user", "content": "hi"}])
        assert requests[0]["headers"]["Authorization"] == "Bearer sk-secret-123"  # the configured host got it
        assert stolen == [], "the client followed the redirect"
    assert "sk-secret-123" not in str(err.value)
    echo = lambda headers: f'{{"error": "invalid key {headers["Authorization"]}"}}'  # noqa: E731
    with serve(lambda body, n: (401, echo)) as (url, requests):
        with pytest.raises(LLMError, match=r"HTTP 401 .*invalid key Bearer \*\*\*") as err:
            keyed(url).chat([{"role": "user", "content": "hi"}])
    assert "sk-secret-123" not in str(err.value)
    with serve(lambda body, n: (503, echo)) as (url, requests):
        with pytest.raises(LLMError, match="failed after") as err:
            keyed(url).chat([{"role": "user", "content": "hi"}])
    assert "sk-secret-123" not in str(err.value)


def test_unreachable_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(LLMError, match="failed after 2 attempts"):
        client(f"http://127.0.0.1:{port}/v1", [], max_retries=1).chat([{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------------------------------------
# compressor + judge

def compress_and_judge(judge_scores):
    """Mementos are '<first word of the block> v<attempt>'; the judge scores attempt k as judge_scores(word)[k - 1]."""
    def respond(body, n):
        system, user = body["messages"][0]["content"], user_text(body)
        if system.startswith("You write mementos"):
            name = re.search(r"BLOCK TO COMPRESS:\n(\w+)", user).group(1)
            previous = re.search(r"YOUR PREVIOUS MEMENTO:\n\w+ v(\d)", user)
            version = int(previous.group(1)) + 1 if previous else 1
            return 200, json.dumps({"memento": f"{name} v{version}"})
        if system.startswith("You review mementos"):
            name, version = re.search(r"MEMENTO:\n(\w+) v(\d)", user).groups()
            score = judge_scores(name)[int(version) - 1]
            return 200, json.dumps({"score": score, "feedback": f"fix {name} v{version}"})
        return 200, window_scores(body)
    return respond


def test_compressor_judge_loop():
    table = {"alpha": [5, 9], "beta": [9], "gamma": [3, 6, 6]}
    with serve(compress_and_judge(table.get)) as (url, requests):
        results = LLMCompressor(client(url), config=JudgeLoopConfig()).compress_blocks(
            ["alpha block text", "beta block text", "gamma block text"], problem="the problem")
    assert [(r.memento, r.feedback_rounds, r.judge_scores, r.passed) for r in results] == [
        ("alpha v2", 1, (5, 9), True),  # passes after one feedback round
        ("beta v1", 0, (9,), True),  # passes at once
        ("gamma v3", 2, (3, 6, 6), False),  # never reaches 8 in 2 rounds: best score, later attempt on ties
    ]
    assert len(requests) == 4 + 2 + 6
    prompts = [user_text(r["body"]) for r in requests]
    assert any("EARLIER MEMENTOS:\n[1] alpha v2\n\nBLOCK TO COMPRESS:\nbeta" in p for p in prompts)
    assert any("scored it 5/10" in p and "fix alpha v1" in p for p in prompts)


def test_llm_pipeline_end_to_end_through_the_cli(tmp_path):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [synthetic_record("s1", 5)])
    out = tmp_path / "out.jsonl"
    with serve(compress_and_judge(lambda name: [9])) as (url, requests):  # every first memento passes
        assert main(["data", "run", str(source), "--out", str(out), "--tokenizer", "stand-in", "--scorer", "llm",
                     "--compressor", "llm", "--llm-base-url", url, "--llm-model", "test-model",
                     "--min-block-tokens", "100", "--score-mean", "blocks"]) == 0
    [record] = read_openmementos(out)
    meta = record.extra["memento_pipeline"]
    assert meta["scorer"] == "llm" and meta["compressor"] == "llm" and meta["windows"] == [16, 11]
    assert all(meta["judge_passed"]) and len(meta["judge_passed"]) == len(meta["block_tokens"]) >= 2
    assert all(s % 0.5 == 0 for s in meta["chosen_boundary_scores"])
