"""Two-stage Memento SFT on `transformers.Trainer`.

Stage 1 trains with full causal attention (learn the format); stage 2 starts from stage 1's best
checkpoint (lowest validation loss) and trains with the memento mask (learn to live without evicted
blocks). The only Memento-specific piece is `MementoCollator`, which builds each batch's mask with
`leakage.memento.mask.unroll` (the memento mask; under restart, the unrolled recomputation) — so the same command scales with `torchrun`, accelerate or DeepSpeed.

Run folder::

    runs/NAME/config.json            the run's full configuration
    runs/NAME/metrics.jsonl          every logged metric, one JSON object per line, with its stage
    runs/NAME/stage{1,2}/checkpoint-N/   HF checkpoints (model + tokenizer + trainer state)
    runs/NAME/stage{1,2}/done.json   best checkpoint and wall time of a finished stage; resumed runs skip it
    runs/NAME/stage{1,2}/rank{r}.json    per-rank weight fingerprint at the end of the stage
    runs/NAME/final/                 the model to use: stage 2's best checkpoint, HF format

`TrainedRun` is the one reader of that layout (config, final model, metrics, stage records, saved
checkpoints); `ensure_trained` returns a run's final model, training it when it is not there.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from leakage.config import EVICTION_PRESETS, EvictionConfig
from leakage.training.evaluate import accuracies
from leakage.io import atomic_write_json, atomic_write_text
from leakage.provenance import code_fingerprint
from leakage.memento.mask import additive_mask, unroll
from leakage.memento.spans import parse_spans
from leakage.engine.model import build_model, check_weight_files, load_model, save_model
from leakage.training.tasks import TRAINING_SHORT_BLOCK_RATE, TaskConfig, make_example, task_spec


@dataclass(frozen=True)
class TrainPreset:
    """How long and how hard to train; steps are optimizer steps per stage."""

    stage1_steps: int
    stage2_steps: int
    batch_size: int
    learning_rate: float
    train_examples: int
    eval_every: int  # validation loss + task accuracy
    save_every: int  # checkpoint interval (a multiple of eval_every)
    n_val: int  # validation examples for the loss
    n_eval: int  # examples for task accuracy during training
    model_preset: str = "tiny"
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    warmup: float = 0.05  # share of each stage's steps spent warming the learning rate up from 0
    schedule: str = "cosine"  # the learning rate after warm-up (an HF scheduler name)
    decay: float = 0.0  # warmup_stable_decay only: share of each stage's steps in the final (cosine) decay
    loss_on_random_inputs: bool = True  # train on predicting the digits the task draws at random (pure noise)
    bf16: bool = False  # bf16 mixed precision (autocast, as the paper trained); weights and optimizer stay float32

    def __post_init__(self):
        for name in ("stage1_steps", "stage2_steps", "batch_size", "train_examples", "eval_every", "save_every",
                     "n_val"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if self.save_every % self.eval_every:
            raise ValueError(f"save_every ({self.save_every}) must be a multiple of eval_every ({self.eval_every})")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if (self.schedule == "warmup_stable_decay") != (self.decay > 0) or not 0 <= self.decay <= 1 - self.warmup:
            raise ValueError(f"decay ({self.decay}) is the warmup_stable_decay schedule's share of steps in its "
                             f"final decay: in (0, 1 - warmup] with that schedule, 0 with any other "
                             f"(schedule {self.schedule!r})")


TRAIN_PRESETS: dict[str, TrainPreset] = {
    # seconds: for tests
    "smoke": TrainPreset(stage1_steps=6, stage2_steps=6, batch_size=4, learning_rate=3e-3, train_examples=64,
                         eval_every=3, save_every=3, n_val=8, n_eval=4),
    # the default main job's recipe, about 12 of its 15 minutes on 2 CPU cores: no loss on the digits the task
    # draws at random, 3,300 stage-2 steps, and the learning rate held at its peak until the last 30% of each
    # stage (warmup-stable-decay); docs/training.md, "Recipes across seeds", has it on every seed
    "fast": TrainPreset(stage1_steps=300, stage2_steps=3300, batch_size=32, learning_rate=3e-3,
                        train_examples=48_000, eval_every=300, save_every=300, n_val=256, n_eval=64,
                        loss_on_random_inputs=False, schedule="warmup_stable_decay", decay=0.3),
    # `fast` with 2,400 stage-2 steps, the last 20% decaying: the running sums reached 90% on four seeds of five
    "fast-v3": TrainPreset(stage1_steps=300, stage2_steps=2400, batch_size=32, learning_rate=3e-3,
                           train_examples=48_000, eval_every=300, save_every=300, n_val=256, n_eval=64,
                           loss_on_random_inputs=False, schedule="warmup_stable_decay", decay=0.2),
    # `fast-v3` with a cosine schedule (issue 21's first recipe): the running sums reached 90% on four seeds of five
    "fast-v2": TrainPreset(stage1_steps=300, stage2_steps=2400, batch_size=32, learning_rate=3e-3,
                           train_examples=48_000, eval_every=300, save_every=300, n_val=256, n_eval=64,
                           loss_on_random_inputs=False),
    # the fast recipe before issue 21 (noise-digit loss, 1,800 steps): learned both skills on some seeds only;
    # the committed results of the 10-block `fast` models (docs/results.md) were trained with it
    "fast-v1": TrainPreset(stage1_steps=300, stage2_steps=1500, batch_size=32, learning_rate=3e-3,
                           train_examples=48_000, eval_every=150, save_every=150, n_val=256, n_eval=64),
    # `fast` in bf16 mixed precision, as the paper trained (issue 23: does a bf16-trained channel survive bf16?)
    "fast-bf16": TrainPreset(stage1_steps=300, stage2_steps=3300, batch_size=32, learning_rate=3e-3,
                             train_examples=48_000, eval_every=300, save_every=300, n_val=256, n_eval=64,
                             loss_on_random_inputs=False, schedule="warmup_stable_decay", decay=0.3, bf16=True),
    # the paper's toy regime: 50K training sequences, several epochs per stage
    "paper": TrainPreset(stage1_steps=4000, stage2_steps=8000, batch_size=64, learning_rate=2e-3,
                         train_examples=50_000, eval_every=500, save_every=500, n_val=1000, n_eval=256),
}


def train_preset(name: str) -> TrainPreset:
    try:
        return TRAIN_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown training preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}") from None


@dataclass(frozen=True)
class RunConfig:
    """A run is its config plus its seed."""

    task: TaskConfig
    preset: TrainPreset
    stages: tuple[int, ...] = (1, 2)
    eviction: EvictionConfig = EvictionConfig()  # stage 2's memento mask, and the decoding evaluated
    seed: int = 0

    def stage_eviction(self, stage: int) -> EvictionConfig:
        if stage == 1:
            return EVICTION_PRESETS["vanilla"]
        return self.eviction

    def stage_steps(self, stage: int) -> int:
        return self.preset.stage1_steps if stage == 1 else self.preset.stage2_steps

    def to_dict(self) -> dict:
        """The config as its JSON form (tuples as lists), as `config.json` holds it."""
        fields = {"task": asdict(self.task), "preset": asdict(self.preset), "stages": list(self.stages),
                  "eviction": asdict(self.eviction), "seed": self.seed}
        return json.loads(json.dumps(fields))

    @classmethod
    def from_dict(cls, fields: dict) -> "RunConfig":
        """The config back from its JSON form (`to_dict`)."""
        task = dict(fields["task"], passcode_blocks=tuple(fields["task"].get("passcode_blocks", ())))
        return cls(task=TaskConfig(**task), preset=TrainPreset(**fields["preset"]), stages=tuple(fields["stages"]),
                   eviction=EvictionConfig(**fields["eviction"]), seed=fields["seed"])


class TaskDataset(Dataset):
    """`size` examples of a task split, generated on first use and kept for the next epochs (example i is a
    pure function of the seed and i)."""

    def __init__(self, config: TaskConfig, tokenizer, size: int, seed: int, split: str = "train",
                 loss_on_random_inputs: bool = True):
        self.config, self.tokenizer, self.size, self.seed, self.split = config, tokenizer, size, seed, split
        self.loss_on_random_inputs = loss_on_random_inputs
        self._rows: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(index)
        if index not in self._rows:
            example = make_example(self.config, self.tokenizer, self.seed, index, self.split)
            row = {"input_ids": example.ids, "prompt_len": example.prompt_len}
            untrained = example.inserted + ([] if self.loss_on_random_inputs else example.random_inputs)
            if untrained:
                row["untrained"] = sorted(untrained)
            self._rows[index] = row
        return self._rows[index]

    def examples(self, n: int) -> list:
        return [make_example(self.config, self.tokenizer, self.seed, i, self.split) for i in range(min(n, self.size))]


@dataclass
class MementoCollator:
    """Right-pads a batch and builds labels, position ids and the attention mask of eviction decoding.

    Each row is laid out as its unrolled forward (`leakage.memento.mask.unroll`): the sequence itself, except
    under restart, where every recomputed memento span appears twice (the copy written while its block
    was visible, whose logits predict the memento, and the recomputation later tokens see), so one
    forward computes exactly what restart decoding computes at every predicted token. Returns
    input_ids, position_ids (the logical positions) and labels (B, T'), -100 on prompt, padding, rows
    that predict nothing and rows predicting a position a feature lists as `untrained`, and attention_mask (B, 1, T', T') in additive float form (HF's eager attention
    adds a 4D mask to the scores, so a bool mask would not mask anything). Stage 1 passes
    keep_last_n_blocks=-1: causal with padding.
    """

    tokenizer: object
    eviction: EvictionConfig

    def __call__(self, features: list[dict]) -> dict:
        layouts = []
        for i, f in enumerate(features):
            try:
                spans = parse_spans(list(f["input_ids"]), self.tokenizer, prompt_len=f["prompt_len"])
            except ValueError as err:
                raise ValueError(f"batch row {i}: {err}") from err
            layouts.append(unroll(spans, self.eviction))
        B, T = len(features), max(len(u.index) for u in layouts)
        ids = torch.full((B, T), self.tokenizer.pad_token_id, dtype=torch.long)
        positions = torch.arange(T).repeat(B, 1)
        labels = torch.full((B, T), -100, dtype=torch.long)
        mask = torch.eye(T, dtype=torch.bool).repeat(B, 1, 1)  # pad rows see themselves
        for b, (f, u) in enumerate(zip(features, layouts)):
            tokens, n = torch.tensor(f["input_ids"]), len(u.index)
            ids[b, :n], positions[b, :n] = tokens[u.index], u.index
            mask[b, :n, :n] = u.mask
            nxt = u.index + 1  # the logical position each row's logits predict
            trained = u.predicts & (nxt >= f["prompt_len"]) & (nxt < len(tokens))
            if f.get("untrained"):  # positions the recipe leaves out of the loss
                untrained = torch.zeros(len(tokens) + 1, dtype=torch.bool)
                untrained[f["untrained"]] = True
                trained &= ~untrained[nxt]
            targets = torch.where(trained, tokens[nxt.clamp(max=len(tokens) - 1)], -100)
            labels[b, 1:n] = targets[:-1]  # HF shifts labels: row r's logits are scored against labels[r + 1]
        return {"input_ids": ids, "position_ids": positions, "labels": labels, "attention_mask": additive_mask(mask)}


class TrainingDiverged(ArithmeticError):
    """A loss came out NaN or infinite: training diverged, and nothing it saves from here on is a model."""


class MetricsLogger(TrainerCallback):
    """Appends every logged dict (with stage and step) to a JSONL file, on the main process only. A loss
    that is not a finite number stops training with `TrainingDiverged`, naming the stage and step."""

    def __init__(self, path: Path, stage: int | str):
        self.path, self.stage = path, stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = sorted(k for k, v in (logs or {}).items() if "loss" in k and isinstance(v, float) and not math.isfinite(v))
        if bad:
            raise TrainingDiverged(f"stage {self.stage}, step {state.global_step}: {', '.join(bad)} = "
                                   f"{logs[bad[0]]}: training diverged (lower the learning rate or check the data)")
        if state.is_world_process_zero and logs:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"stage": self.stage, "step": state.global_step, **logs}, allow_nan=False) + "\n")


def trim_metrics(path: Path, stage: int | str, step: int) -> None:
    """Drop the metrics a resumed stage will log again: its lines after `step` (the checkpoint it resumes
    from; 0: all of them). Other stages' lines stay."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if (r := json.loads(line))["stage"] != stage or r["step"] <= step]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))


class TaskAccuracyCallback(TrainerCallback):
    """After each evaluation: teacher-forced accuracy of every unit the task scores (`TaskSpec.units`),
    under the run's decoding and its restart, logged as `eval_acc_{unit}_{memento|restart}`."""

    def __init__(self, tokenizer, examples: list, task: str, eviction: EvictionConfig):
        self.tokenizer, self.examples, self.task = tokenizer, examples, task
        evicting = eviction if eviction.evicts else replace(eviction, keep_last_n_blocks=0)
        self.configs = {"memento": replace(evicting, restart=False), "restart": replace(evicting, restart=True)}
        self.trainer: Trainer | None = None

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not self.examples or not state.is_world_process_zero:
            return
        was_training = model.training
        model.eval()
        units = task_spec(self.task).units
        metrics = {f"eval_acc_{unit}_{name}": scored.value for name, cfg in self.configs.items()
                   for unit, scored in accuracies(model, self.tokenizer, self.examples, cfg, units).items()}
        model.train(was_training)
        self.trainer.log(metrics)


def weights_fingerprint(model) -> str:
    """sha256 over every parameter's bytes, in state-dict order: equal on ranks in sync."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _ddp_backend() -> str | None:
    """gloo on CPU, NCCL on GPU, when launched with several processes (torchrun sets WORLD_SIZE)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return "nccl" if torch.cuda.is_available() else "gloo"


def training_arguments(run: RunConfig, stage: int, stage_dir: Path, **overrides) -> TrainingArguments:
    p = run.preset
    kwargs = dict(
        output_dir=str(stage_dir), max_steps=run.stage_steps(stage), per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size, learning_rate=p.learning_rate, weight_decay=p.weight_decay,
        adam_beta1=0.9, adam_beta2=0.999, optim="adamw_torch", lr_scheduler_type=p.schedule, warmup_steps=p.warmup,
        max_grad_norm=1.0, seed=run.seed, data_seed=run.seed, eval_strategy="steps", eval_steps=p.eval_every,
        save_strategy="steps", save_steps=p.save_every, load_best_model_at_end=True,
        metric_for_best_model="eval_loss", greater_is_better=False, logging_steps=max(1, p.eval_every // 5),
        logging_first_step=True, logging_nan_inf_filter=False, report_to="none", remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_backend=_ddp_backend(), use_cpu=not torch.cuda.is_available(), bf16=p.bf16,
    )
    if p.decay:
        kwargs["lr_scheduler_kwargs"] = {"num_decay_steps": round(p.decay * run.stage_steps(stage))}
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def train_stage(run: RunConfig, stage: int, model, tokenizer, run_dir: Path, resume: bool = False,
                callbacks: list | None = None, **argument_overrides) -> Path:
    """Train one stage; returns its best checkpoint directory (lowest validation loss)."""
    stage_dir = run_dir / f"stage{stage}"
    done = stage_dir / "done.json"
    if resume and done.is_file():
        return run_dir / json.loads(done.read_text())["best_checkpoint"]
    given = run.preset.loss_on_random_inputs
    train_set = TaskDataset(run.task, tokenizer, run.preset.train_examples, run.seed, "train", given)
    val_set = TaskDataset(run.task, tokenizer, run.preset.n_val, run.seed, "val", given)
    eval_set = TaskDataset(replace(run.task, short_block_rate=0.0), tokenizer, run.preset.n_eval, run.seed, "val")
    accuracy = TaskAccuracyCallback(tokenizer, eval_set.examples(run.preset.n_eval), run.task.task, run.eviction)
    trainer = Trainer(model=model, args=training_arguments(run, stage, stage_dir, **argument_overrides),
                      train_dataset=train_set, eval_dataset=val_set,
                      data_collator=MementoCollator(tokenizer, run.stage_eviction(stage)),
                      processing_class=tokenizer,
                      callbacks=[MetricsLogger(run_dir / "metrics.jsonl", stage), accuracy, *(callbacks or [])])
    accuracy.trainer = trainer
    checkpoint = last_complete_checkpoint(stage_dir) if resume else None
    has_checkpoint = checkpoint is not None
    if resume:
        trim_metrics(run_dir / "metrics.jsonl", stage, int(checkpoint.name.split("-")[1]) if checkpoint else 0)
    require_space(stage_dir, 3 * checkpoint_bytes(model))
    start = time.perf_counter()
    with disk_full_named(stage_dir):
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - start
    atomic_write_json(stage_dir / f"rank{_rank()}.json", {"weights_sha256": weights_fingerprint(trainer.model)})
    if trainer.state.global_step < run.stage_steps(stage):
        raise TrainingInterrupted(f"stage {stage} stopped at step {trainer.state.global_step} of "
                                  f"{run.stage_steps(stage)}; resume with resume=True")
    best = Path(trainer.state.best_model_checkpoint or stage_dir / f"checkpoint-{trainer.state.global_step}")
    if trainer.is_world_process_zero():
        atomic_write_json(done, {"best_checkpoint": str(best.relative_to(run_dir)),  # the folder may move
                                 "best_eval_loss": trainer.state.best_metric,
                                 "steps": trainer.state.global_step, "wall_seconds": seconds,
                                 "resumed": has_checkpoint})
    return best


class TrainingInterrupted(RuntimeError):
    """A stage stopped before its last step (a callback asked it to); the run can be resumed."""


CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
"""What a Trainer checkpoint holds besides its weights; one that lacks any is incomplete."""


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The highest-step `checkpoint-N` in `folder` whose files are all there and whose weights load (a
    checkpoint cut short by a crash or a full disk is skipped), or None."""
    found = sorted(((int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name[11:].isdigit()),
                   reverse=True)
    for _, path in found:
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            check_weight_files(path)
        except (OSError, ValueError):
            continue
        if all((path / name).is_file() and (path / name).stat().st_size > 0 for name in CHECKPOINT_FILES):
            return path
    return None


def checkpoint_bytes(model) -> int:
    """Rough size of one Trainer checkpoint of `model`: float32 weights and AdamW's two moments."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def require_space(folder: Path, needed: int) -> None:
    """Refuse up front when the device holding `folder` has less than `needed` bytes free."""
    free = shutil.disk_usage(_existing(folder)).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"no space left on the device holding {folder}: {free:,} bytes free, about "
                                    f"{needed:,} needed for its checkpoints")


@contextmanager
def disk_full_named(folder: Path):
    """Turn a write failure on a full device (torch says "unexpected pos" or "file write failed") into one
    error that says so, naming the folder; an incomplete checkpoint it left is skipped on resume."""
    try:
        yield
    except Exception as err:
        full = isinstance(err, OSError) and err.errno == errno.ENOSPC
        if full or shutil.disk_usage(_existing(folder)).free < (1 << 20):
            raise OSError(errno.ENOSPC, f"no space left on the device holding {folder} while writing a checkpoint "
                                        f"({type(err).__name__}: {err}); free some space and resume (the incomplete "
                                        "checkpoint is skipped)") from err
        raise


class StaleRun(ValueError):
    """A run folder holds a run of another config, or one trained by other code."""


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON objects differ (`code.sources_sha256`, `task.n_blocks`)."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(prefix + key)
    return found


RUN_FILES = ("config.json", "metrics.jsonl", "stage1", "stage2", "final")
"""What a run folder holds (module docstring); `overwrite` removes exactly these."""


def prepare_run_dir(record: dict, run_dir: Path, resume: bool, overwrite: bool,
                    files: tuple[str, ...] = RUN_FILES) -> None:
    """Refuse to mix runs in one folder: an existing run (its `config.json` == `record`) is resumed only
    with the same config, replaced only with `overwrite` (which removes exactly `files`, glob patterns
    allowed); a folder holding anything else is refused."""
    config_path = run_dir / "config.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} exists and is not a directory")
    existing = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if not existing:
        return
    if not config_path.is_file():
        raise ValueError(f"run folder {run_dir} is not empty and holds no run (config.json): {existing[:5]}; "
                         "choose a new folder")
    try:
        old = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if overwrite:
        for path in sorted({p for pattern in files for p in run_dir.glob(pattern)}):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return
    if old != record:
        raise StaleRun(f"{run_dir} holds a run with a different configuration or code (differs in "
                       f"{differences(old, record)}); pass --overwrite to replace it, or choose another --out")
    if not resume:
        raise ValueError(f"{run_dir} already holds this run; pass --resume to continue it or --overwrite to "
                         "train it again from scratch")


def train(run: RunConfig, run_dir: str | Path, resume: bool = False, callbacks: list | None = None,
          overwrite: bool = False, **argument_overrides) -> Path:
    """Run the configured stages; stage 2 starts from stage 1's best checkpoint. Returns `run_dir/final`.

    An existing run folder is resumed (`resume`, same config only) or replaced (`overwrite`), never mixed.
    """
    run_dir = Path(run_dir)
    record = run_record(run)
    if _rank() == 0:
        prepare_run_dir(record, run_dir, resume, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _rank() == 0:
        atomic_write_json(run_dir / "config.json", record)
    model, tokenizer = build_model(run.preset.model_preset, seed=run.seed)
    best = None
    for stage in run.stages:
        if best is not None:
            model, tokenizer = load_model(best)
        model.train()
        best = train_stage(run, stage, model, tokenizer, run_dir, resume, callbacks, **argument_overrides)
    final = run_dir / "final"
    if _rank() == 0:
        model, tokenizer = load_model(best)
        save_model(model, tokenizer, final, record)
    return final


def run_record(run: RunConfig) -> dict:
    """What a run folder's `config.json` (and its final model's `leakage.json`) holds: the config and the
    fingerprint of the code that trains it (`leakage.provenance`)."""
    return {**run.to_dict(), "code": code_fingerprint("leakage.training.train")}


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint of a run: its global step (stage 1's steps, then stage 2's), stage and directory."""

    step: int
    stage: int
    path: Path


@dataclass(frozen=True)
class TrainedRun:
    """A `leakage train` run folder, read (module docstring)."""

    path: Path

    @classmethod
    def of(cls, checkpoint: str | Path) -> "TrainedRun | None":
        """The run whose `final/` model `checkpoint` is (stage folders beside it), or None."""
        checkpoint = Path(checkpoint)
        if checkpoint.name == "final" and any((checkpoint.parent / f"stage{s}").is_dir() for s in (1, 2)):
            return cls(checkpoint.parent)
        return None

    @property
    def final(self) -> Path:
        if not (self.path / "final" / "config.json").is_file():
            raise FileNotFoundError(f"{self.path} has no final/ checkpoint: is it a `leakage train` run folder?")
        return self.path / "final"

    @property
    def config(self) -> RunConfig:
        path = self.path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} holds no run (config.json): is it a `leakage train` run folder?")
        try:
            return RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a run config ({err})") from None

    def evaluation_task(self, task: str | None = None) -> TaskConfig:
        """The run's task as the paper evaluates it: fixed-length blocks (no curriculum); a run trained on a
        mixture of passcode blocks is evaluated at the mixture's last one; `task` renames the task."""
        shape = self.config.task
        if shape.passcode_blocks:
            shape = replace(shape, passcode_block=shape.passcode_blocks[-1], passcode_blocks=())
        return replace(shape, task=task or shape.task, short_block_rate=0.0)

    def metrics(self) -> list[dict]:
        """Every logged metric (`metrics.jsonl`), in order."""
        return [json.loads(line) for line in (self.path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]

    def stage_records(self) -> dict[str, dict]:
        """`done.json` of every finished stage, by stage folder name."""
        return {p.parent.name: json.loads(p.read_text(encoding="utf-8"))
                for p in sorted(self.path.glob("stage*/done.json"))}

    def holds(self, run: RunConfig) -> bool:
        """Whether the folder holds `run`, trained by this code and finished (a final model, every stage done)."""
        try:
            recorded = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return False
        done = all((self.path / f"stage{s}" / "done.json").is_file() for s in run.stages)
        return recorded == run_record(run) and done and (self.path / "final" / "config.json").is_file()

    def checkpoints(self) -> list[SavedCheckpoint]:
        """Saved checkpoints of stage 1, then stage 2, with global steps (stage 2's counted after stage 1's)."""
        saved, offset = [], 0
        for stage in (1, 2):
            found = sorted((int(p.name.split("-")[1]), p) for p in (self.path / f"stage{stage}").glob("checkpoint-*"))
            saved += [SavedCheckpoint(offset + step, stage, path) for step, path in found]
            offset += found[-1][0] if found else 0
        return saved


def train_or_reuse(run: RunConfig, path: str | Path, replace_stale: bool = True) -> Path:
    """The `final/` model of the run folder `path` holding `run`: reused when it finished with the same config
    and code, resumed when it stopped, trained otherwise; a folder holding a run of another config or code is
    retrained from scratch (`replace_stale`, removing only its run files) or refused."""
    try:
        return train(run, path, resume=True)
    except StaleRun:
        if not replace_stale:
            raise
        return train(run, path, overwrite=True)


def ensure_trained(task: TaskConfig, preset: str, runs_dir: str | Path = "runs", seed: int = 0,
                   short_block_rate: float = TRAINING_SHORT_BLOCK_RATE, eviction: EvictionConfig = EvictionConfig(),
                   name: str | None = None) -> Path:
    """`train_or_reuse` of a two-stage run of `task` with the training curriculum, in `runs_dir/NAME`
    (default `{task}-{preset}-seed{seed}`)."""
    path = Path(runs_dir) / (name or f"{task.task}-{preset}-seed{seed}")
    run = RunConfig(task=replace(task, short_block_rate=short_block_rate), preset=train_preset(preset),
                    eviction=eviction, seed=seed)
    return train_or_reuse(run, path)


def with_steps(preset: TrainPreset, stage1_steps: int | None = None, stage2_steps: int | None = None) -> TrainPreset:
    """A preset with other stage lengths (None keeps the preset's)."""
    return replace(preset, stage1_steps=stage1_steps if stage1_steps is not None else preset.stage1_steps,
                   stage2_steps=stage2_steps if stage2_steps is not None else preset.stage2_steps)
