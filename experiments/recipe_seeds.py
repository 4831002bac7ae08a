"""Train a model recipe on several seeds and score each seed: does the recipe learn on every seed?

    python experiments/recipe_seeds.py --recipe fast --model passcode4 --seeds 0,1,2,3,4

Each (recipe, seed) is a two-stage `leakage train` run in `runs/recipes/{model}-{recipe}-seed{S}` (reused
when finished with the same settings), scored on the same 256 validation examples (fixed-length blocks) under memento and restart
decoding: the running sums teacher-forced (the paper's task accuracy) and, for passcode models, the
passcode's answer digits (chance 10%), each with its 95% interval over examples. One row per seed is
appended to `figures/recipes.csv` (with the recipe's settings, training time and the command), the table
`docs/training.md` quotes ("Recipes across seeds").
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from leakage.engine.model import load_model
from leakage.flags import parse
from leakage.io import atomic_write_text
from leakage.training.evaluate import accuracies, decoding_modes, validation_examples
from leakage.training.tasks import TRAINING_SHORT_BLOCK_RATE, TaskConfig
from leakage.training.train import TRAIN_PRESETS, RunConfig, TrainedRun, TrainPreset, train_or_reuse
from leakage.provenance import script_command

MODELS = {  # the models whose recipe must learn on every seed
    "passcode4": TaskConfig(task="passcode", n_blocks=4, passcode_block=1),  # the main job's
    "digits": TaskConfig(task="digits", n_blocks=10, passcode_block=1),  # the fast digits model
    "passcode": TaskConfig(task="passcode", n_blocks=10, passcode_block=1),  # the fast passcode model
}
V1 = TRAIN_PRESETS["fast-v1"]
CURRICULUM = {"short_block_rate": TRAINING_SHORT_BLOCK_RATE}  # the short-block share every recipe trains with
RECIPES: dict[str, tuple[TrainPreset, dict]] = {  # name -> (preset, the task's training settings)
    "fast-v1": (V1, CURRICULUM),  # the recipe before issue 21
    "no-noise-loss": (replace(V1, loss_on_random_inputs=False), CURRICULUM),  # no loss on the random digits
    "no-noise-loss-lr6e-3": (replace(V1, loss_on_random_inputs=False, learning_rate=6e-3), CURRICULUM),
    "no-noise-loss-long": (replace(V1, loss_on_random_inputs=False, stage2_steps=2700), CURRICULUM),
    "fast-v2": (TRAIN_PRESETS["fast-v2"], CURRICULUM),  # no-noise-loss with 2,400 stage-2 steps (cosine)
    "fast-v3": (TRAIN_PRESETS["fast-v3"], CURRICULUM),  # fast-v2 with a warmup-stable-decay schedule
    # fast-v3 with 3,300 stage-2 steps and the last 30% decaying: more of the low-rate steps where the sums
    # settle; tried on fast-v3's weakest seeds first, then made the `fast` preset
    "fast-3300": (replace(TRAIN_PRESETS["fast-v3"], stage2_steps=3300, decay=0.3), CURRICULUM),
    "fast": (TRAIN_PRESETS["fast"], CURRICULUM),  # the recipe chosen (equal to fast-3300)
    # fast, half the training traces with the passcode in the last block (its memento is the last before the
    # answer: the easy case: 99.7% in the 4-block capacity model) and half in block 1 (the distance scored)
    "fast-mix": (TRAIN_PRESETS["fast"], {**CURRICULUM, "passcode_blocks": (9, 1)}),
}


FOLDER = "runs/recipes/{model}-{recipe}-seed{seed}"


@dataclass(frozen=True)
class Options:
    """Which recipe, model and seeds.

    recipe: a recipe of RECIPES.
    model: passcode4 (the main job's), digits or passcode (the fast 10-block models).
    seeds: training seeds.
    n_eval: validation examples scored per seed.
    folder: each seed's run folder ({model}, {recipe}, {seed} filled in); point it at the main job's runs
        (runs/reproduce-passcode4-fast-seed{seed}) to score the models `leakage reproduce --seeds` trained.
    out: the CSV the rows are appended to.
    threads: torch threads.
    table: print the markdown table of `out` (recipe x seed; what docs/training.md quotes) and train nothing.
    """

    recipe: str = "fast"
    model: str = "passcode4"
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    n_eval: int = 256
    folder: str = FOLDER
    out: str = "figures/recipes.csv"
    threads: int = 2
    table: bool = False


def markdown_table(frame: pd.DataFrame) -> str:
    """Recipe x seed -> running sums and passcode answer digits (memento decoding, teacher-forced sums), one
    row per (model, recipe), seeds in columns, then how many seeds reach the targets."""
    lines = ["| model | recipe | seeds | running sums, memento (per seed) | answer digits, memento (per seed) | "
             "sums >= 90% | answer above chance | training s (median) |", "|---|---|---|---|---|---|---|---|"]
    for (model, recipe), group in frame.groupby(["model", "recipe"], sort=False):
        group = group.sort_values("seed")
        sums = ", ".join(f"{100 * v:.1f}" for v in group.sums_memento)
        has_answer = "answer_digits_memento" in group and group.answer_digits_memento.notna().all()
        answer = ", ".join(f"{100 * v:.1f}" for v in group.answer_digits_memento) if has_answer else "-"
        above = f"{int((group.answer_digits_memento_low > 0.1).sum())} of {len(group)}" if has_answer else "-"
        lines.append(f"| {model} | {recipe} | {', '.join(map(str, group.seed))} | {sums} | {answer} | "
                     f"{int((group.sums_memento >= 0.9).sum())} of {len(group)} | {above} | "
                     f"{group.train_seconds.median():.0f} |")
    return "\n".join(lines)


def main() -> None:
    options = parse(Options, description=__doc__)
    if options.table:
        print(markdown_table(pd.read_csv(options.out)))
        return
    torch.set_num_threads(options.threads)
    preset, training = RECIPES[options.recipe]
    task = MODELS[options.model]
    command = script_command("experiments/recipe_seeds.py")
    for seed in options.seeds:
        run = RunConfig(task=replace(task, **training), preset=preset, seed=seed)
        folder = Path(options.folder.format(model=options.model, recipe=options.recipe, seed=seed))
        start = time.perf_counter()
        # another tool's run folders (--folder) are scored, never replaced: a config or code mismatch is an error
        final = train_or_reuse(run, folder, replace_stale=options.folder == FOLDER)
        seconds = sum(s.get("wall_seconds") or 0 for s in TrainedRun(folder).stage_records().values())
        model, tokenizer = load_model(final)
        examples = validation_examples(task, tokenizer, options.n_eval, 1)
        units = ("sums", "answer_digits") if task.task == "passcode" else ("sums",)
        row = {"recipe": options.recipe, "model": options.model, "seed": seed,
               "curriculum": training["short_block_rate"],
               "passcode_blocks": ",".join(map(str, training.get("passcode_blocks", ()))),
               **{f"preset_{k}": v for k, v in asdict(preset).items()}, "train_seconds": round(seconds),
               "eval_loss": json.loads((folder / "stage2" / "done.json").read_text())["best_eval_loss"]}
        modes = decoding_modes()
        for mode in ("memento", "restart"):
            for unit, scored in accuracies(model, tokenizer, examples, modes[mode], units).items():
                low, high = scored.ci95
                row.update({f"{unit}_{mode}": scored.value, f"{unit}_{mode}_low": low, f"{unit}_{mode}_high": high})
        row["command"] = command
        frame = pd.read_csv(options.out) if Path(options.out).is_file() else pd.DataFrame()
        frame = frame[~((frame.get("recipe") == row["recipe"]) & (frame.get("model") == row["model"])
                        & (frame.get("seed") == seed))] if len(frame) else frame
        atomic_write_text(options.out, pd.concat([frame, pd.DataFrame([row])], ignore_index=True).to_csv(index=False))
        shown = ", ".join(f"{k} {row[k]:.3f}" for k in row if k.endswith(("_memento", "_restart")))
        print(f"{options.model} {options.recipe} seed {seed}: {shown} ({time.perf_counter() - start:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
