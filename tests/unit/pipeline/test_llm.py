"""JSON extraction, prompt files and templates (the HTTP client itself is tested against a real server in
tests/integration/test_pipeline_llm.py)."""

import re

import pytest

from leakage.pipeline.llm import LLMConfig, extract_json, load_prompt, render_prompt


@pytest.mark.parametrize("reply,expected", [
    ('{"scores": [1, 2]}', {"scores": [1, 2]}),
    ('Sure! Here you go:\n```json\n{"scores": [0]}\n```\nAnything else?', {"scores": [0]}),
    ('<think>maybe {"scores": [3]}?</think>{"scores": [1]}', {"scores": [1]}),
    ('The scores are {broken then {"scores": [2, 2]} ok', {"scores": [2, 2]}),
    ("[1, 2, 3]", [1, 2, 3]),
])
def test_extract_json(reply, expected):
    assert extract_json(reply) == expected


@pytest.mark.parametrize("reply", ["", "no json here", '{"scores": [1, 2'])
def test_extract_json_refuses_replies_without_json(reply):
    with pytest.raises(ValueError, match="no JSON"):
        extract_json(reply)


def test_render_prompt_checks_placeholders():
    assert render_prompt("a {{x}} b {{y}} {{x}}", x="1", y="{{z}} $5") == "a 1 b {{z}} $5 1"
    with pytest.raises(KeyError):
        render_prompt("a {{x}}", x="1", y="2")
    with pytest.raises(KeyError):
        render_prompt("a {{x}} {{y}}", x="1")


# the placeholders each shipped prompt is rendered with (scoring.py, compress.py)
PROMPTS = {
    "score_system.txt": set(), "score_user.txt": {"text", "boundaries", "count"},
    "compress_system.txt": set(), "compress_user.txt": {"problem", "previous", "block"},
    "compress_feedback.txt": {"problem", "previous", "block", "memento", "score", "feedback"},
    "judge_system.txt": set(), "judge_user.txt": {"block", "memento"},
}


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_shipped_prompts_have_the_placeholders_the_code_fills(name):
    text = load_prompt(name)
    assert set(re.findall(r"\{\{(\w+)\}\}", text)) == PROMPTS[name]


def test_missing_prompt_is_named():
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_prompt("nope.txt")


def test_config_validation():
    with pytest.raises(ValueError, match="http"):
        LLMConfig(base_url="localhost:8000", model="m")
    with pytest.raises(ValueError):
        LLMConfig(base_url="http://localhost:8000/v1", model="m", timeout_s=0)
