"""Bad input a new user would try: every command answers with one clear line (exit 2), never a traceback,
never a silently wrong result. (Data loss, secrets and resumes have their own tests: test_io.py,
test_pipeline_llm.py, test_pipeline_resume.py, test_train.py.)"""

import json
import re
from dataclasses import replace

import pytest
import torch

from leakage.cli import main
from leakage.config import EvictionConfig
from leakage.engine.decode import teacher_force
from leakage.training.tasks import TaskConfig
from leakage.training.train import train_preset
from leakage.memento.trace import MementoTrace
from tests.pipeline_data import synthetic_record, write_jsonl

RESPONSE = ("<|block_start|> 1 2 3 = 6 <|block_end|> <|summary_start|> 6 <|summary_end|> </think> 6")


def fails_cleanly(capsys, argv, match):
    """The command exits 2 with one line on stderr naming the problem, and no traceback."""
    capsys.readouterr()  # what earlier steps printed
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("leakage ")]  # not warnings or progress bars
    assert len(lines) == 1 and "Traceback" not in err, err
    command = " ".join(argv[:2]) if argv[0] == "data" else argv[0]
    assert lines[0].startswith(f"leakage {command}: error: ")
    assert re.search(match, lines[0]), lines[0]


def test_decode_bad_inputs(capsys):
    fails_cleanly(capsys, ["decode", "--prompt", "what is the frobnicate ? <think>"], r"not in the model's vocab.*frobnicate")
    fails_cleanly(capsys, ["decode", "--prompt", ""], "--prompt is empty")
    fails_cleanly(capsys, ["decode", "--prompt", "sum <think>", "--top-k", "0"], "top_k must be a positive")
    fails_cleanly(capsys, ["decode", "--prompt", "sum <think>", "--keep-last-n-blocks", "-2"], "keep_last_n_blocks")
    with pytest.raises(ValueError, match="frobnicate"):  # --debug shows the traceback
        main(["--debug", "decode", "--prompt", "frobnicate"])


def test_decode_zero_tokens_and_empty_teacher_forcing(capsys):
    assert main(["decode", "--prompt", "sum ? <think>", "--max-new-tokens", "0"]) == 0
    out = capsys.readouterr().out
    assert "[    prompt] sum ?" in out and "block" not in out.split("KV cache")[0]
    assert main(["decode", "--prompt", "sum ? <think>", "--teacher-force", "", "--temperature", "1"]) == 0
    assert "block" not in capsys.readouterr().out.split("KV cache")[0]  # nothing was sampled


def test_train_and_task_bad_inputs(capsys, tmp_path):
    fails_cleanly(capsys, ["train", "--preset", "smoke", "--stages", "3", "--out", str(tmp_path / "r")], "--stages")
    fails_cleanly(capsys, ["train", "--preset", "smoke", "--stage1-steps", "-1", "--out", str(tmp_path / "r")],
                  "stage1_steps must be a positive")
    fails_cleanly(capsys, ["train", "--preset", "nope", "--out", str(tmp_path / "r")], "unknown training preset")
    for schedule, decay in (("warmup_stable_decay", 0.0), ("cosine", 0.2), ("warmup_stable_decay", 0.99)):
        with pytest.raises(ValueError, match="is the warmup_stable_decay schedule's share"):
            replace(train_preset("smoke"), schedule=schedule, decay=decay)
    with pytest.raises(ValueError, match="n_blocks must be at least 1"):
        TaskConfig(n_blocks=0)
    with pytest.raises(ValueError, match="recall names blocks by one digit"):
        TaskConfig(task="recall", n_blocks=11)


def test_checkpoint_problems(capsys, tmp_path, tiny):
    from leakage.engine.model import load_model, save_model

    save_model(*tiny, tmp_path / "ckpt")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "ckpt" / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_model(tmp_path / "ckpt")
    fails_cleanly(capsys, ["eval", "--checkpoint", str(tmp_path / "nothing")], "not an HF checkpoint")


def test_other_architectures_decode_and_evaluate_with_a_warning(capsys, tmp_path):
    """A GPT-2 checkpoint (no GQA, no head_dim) runs through decode and eval; never trained on the format,
    it is flagged as such instead of silently scoring an untrained model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from leakage.engine.model import build_tokenizer

    tokenizer = build_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=2, n_head=2))
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    assert main(["decode", "--checkpoint", str(tmp_path / "gpt2"), "--prompt", "sum ? <think>",
                 "--teacher-force", RESPONSE]) == 0
    captured = capsys.readouterr()
    assert "never trained on the Memento format" in captured.err and "peak ratio" in captured.out
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "gpt2"), "--blocks", "2", "--n", "2",
                 "--out", str(out)]) == 0
    assert "GPT2LMHeadModel" in capsys.readouterr().err and json.loads(out.read_text())["n_examples"] == 2


def test_padded_tensors_and_bad_ids_are_not_fed_silently(tiny):
    model, tokenizer = tiny
    ids = MementoTrace("sum", [("1 2", "3")], "3").to_ids(tokenizer)
    pad = tokenizer.pad_token_id
    left = torch.tensor([[pad, pad, *ids], [*ids, 5, 6]])
    with pytest.raises(ValueError, match="row 0 holds the pad token id"):
        teacher_force(model, tokenizer, left)
    real = left != pad
    padded = teacher_force(model, tokenizer, left, padding_mask=real)
    alone = teacher_force(model, tokenizer, ids)
    assert torch.allclose(padded.logits[0, :len(ids)], alone.logits[0], atol=1e-5)
    assert padded.lengths == [len(ids), len(ids) + 2]
    with pytest.raises(ValueError, match="prompt_len has 1 entries for 2 sequences"):
        teacher_force(model, tokenizer, [ids, ids], prompt_len=[2])
    with pytest.raises(ValueError, match=r"row 0, position 3: token id 99999 is outside"):
        teacher_force(model, tokenizer, [ids[:3] + [99999] + ids[4:]], EvictionConfig())
    from leakage.engine.capture import capture

    with pytest.raises(ValueError, match=r"row 1, position 0: token id -1"):
        capture(model, tokenizer, [ids, [-1, *ids[1:]]], EvictionConfig(), ["memento@0"])
    with pytest.raises(KeyError, match="row 0: site memento@4: the sequence has 1 blocks"):
        capture(model, tokenizer, [ids], EvictionConfig(), ["memento@4"])


def test_data_commands_bad_inputs(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    good = tmp_path / "good.jsonl"
    write_jsonl(good, [synthetic_record("g", 2)])
    corpus = ["--tokenizer", "stand-in", "--stand-in-corpus", str(good)]
    csv = tmp_path / "stats.csv"
    fails_cleanly(capsys, ["data", "stats", str(empty), *corpus, "--csv", str(csv)], "empty.jsonl: no records")
    assert not csv.exists()
    fails_cleanly(capsys, ["data", "kv", str(empty), *corpus], "no records")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'\n\x89PNG\r\n\x1a\n\xff\xfe')
    fails_cleanly(capsys, ["data", "run", str(binary), "--out", str(tmp_path / "o.jsonl"), *corpus],
                  r"binary.jsonl, line 2: not UTF-8")  # line 1 is blank
    marked = tmp_path / "marked.jsonl"
    record = synthetic_record("t7", 1)
    record["cot"] = record["cot"].replace("Let me", "<|block_end|> Let me", 1)
    write_jsonl(marked, [record])
    fails_cleanly(capsys, ["data", "run", str(marked), "--out", str(tmp_path / "o.jsonl"), *corpus],
                  r"marked.jsonl, line 1 \(trace t7\): the reasoning contains the format marker '<\|block_end\|>'")
    fails_cleanly(capsys, ["data", "run", str(good), "--out", str(good), *corpus], "is the input file")
    assert json.loads(good.read_text().splitlines()[0])["task_id"] == "g"


def test_segmentation_refuses_what_it_cannot_finish():
    from leakage.pipeline.segment import SegmentationError, segment

    n = 60_000  # a 5.6 MB trace has tens of thousands of sentences
    with pytest.raises(SegmentationError, match="too large for the exact search.*--max-blocks"):
        segment([25] * n, [1.0] * (n - 1))
