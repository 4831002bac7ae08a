"""The main job's reports: `REPORT.md` for one run, `SEEDS.md` and `seeds.csv` across training seeds.

`claims(records)` reads one run's stage records into its headline numbers (a flat dict: `CLAIMS` names and
describes each). `report_text` writes them beside the paper's, says plainly where the run's model did not
learn what an analysis needs (a passcode answered at chance leaves patching and ablation nothing to
explain), records the machine (floats differ across CPUs: `docs/results.md`, "Determinism"), and puts each
number beside the committed seed range (`seeds.csv` of a multi-seed run) with a word when it falls outside.
`seeds_table` and `seeds_text` are the multi-seed run's: per-seed rows, then median, range and a 95%
interval of the mean across seeds, and each claim as a statement about seeds ("in 5 of 5 seeds").
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leakage.stats import mean_interval

PAPER = {  # facts: ../shared/reference/memento-facts.md
    "toy_task_accuracy": 0.95,  # 4 layers, d_model 128, 10 blocks of 5 digits
    "toy_probe_masked_d1": 0.249,  # passcode probe on the toy model, all layers
    "toy_probe_masked_d2": 0.214,
    "qwen3_8b_probe_direct": 0.652,
    "qwen3_8b_probe_masked": 0.267,
    "qwen3_8b_restart_drop_pp": -15.3,  # AIME24, 66.1% normal vs 50.8% restart
    "peak_kv_reduction": "2-3x",
    "kv_auc_reduction": "2-3.5x",
}
CHANCE = 0.1
SUMS_TARGET = 0.9
"""The running sums a model must reach (teacher-forced, memento decoding) to count as having learned them."""


@dataclass(frozen=True)
class Claim:
    """A headline number: its key, what it is, and how to state a seed count of it (`holds(value)`)."""

    key: str
    label: str
    percent: bool = True
    statement: str = ""
    threshold: float | None = None  # `statement` holds for a seed when its value is above this (`above`)
    above: bool = True  # False: the statement holds at or below the threshold
    needs_answer: bool = False  # only meaningful where the model reads the passcode (answer above chance)
    bounds: tuple[float, float] | None = None  # the values it can take (an accuracy: 0..1); clips intervals


ACCURACY = (0.0, 1.0)
POINTS = (-100.0, 100.0)  # a difference of two accuracies, in points

CLAIMS = (
    Claim("sums", "running sums, teacher-forced, memento decoding", statement=">= 90%", threshold=SUMS_TARGET - 1e-12,
          bounds=ACCURACY),
    Claim("answer_memento", "passcode answer digits, memento decoding",
          statement="above chance (interval excludes 10%)", bounds=ACCURACY),
    Claim("answer_restart", "passcode answer digits, restart decoding", bounds=ACCURACY),
    Claim("answer_full", "passcode answer digits, full attention", bounds=ACCURACY),
    Claim("restart_drop", "restart ablation drop, running sums (points)", percent=False,
          statement="a drop (interval below 0)", bounds=POINTS),
    Claim("answer_restart_drop", "restart ablation drop, passcode answer (points)", percent=False,
          statement="a drop (interval below 0)", bounds=POINTS),
    Claim("probe_direct", "probe, memento that saw the passcode (direct)", statement="above chance", bounds=ACCURACY),
    Claim("probe_masked_d1", "probe, masked d=1", statement="above chance", bounds=ACCURACY),
    Claim("probe_masked_d2", "probe, masked d=2", statement="above chance", bounds=ACCURACY),
    Claim("probe_causal_control", "probe, causal control (block 0's memento)",
          statement="at chance (interval holds 10%)", bounds=ACCURACY),
    Claim("probe_restart_kv", "probe, restart KV", statement="at chance (interval holds 10%)", bounds=ACCURACY),
    Claim("bits_direct", "bits leaked per passcode, direct (MDL; uniform code 16.6)", percent=False,
          statement="> 0", threshold=0.0),
    Claim("bits_masked_d1", "bits leaked per passcode, masked d=1 (MDL)", percent=False, statement="> 0", threshold=0.0),
    Claim("bits_masked_d2", "bits leaked per passcode, masked d=2 (MDL)", percent=False, statement="> 0", threshold=0.0),
    Claim("bits_restart_kv", "bits leaked per passcode, restart KV (MDL)", percent=False, statement="<= 0 (none)",
          threshold=0.0, above=False),
    Claim("patch_top_effect", "KV patching: largest layer x head effect (0 clean, 1 twin)", percent=False,
          needs_answer=True),
    Claim("ablate_top_share", "KV ablation: largest single-layer share of the restart drop", percent=True,
          needs_answer=True),
    Claim("kv_peak_ratio", "peak KV reduction (x)", percent=False),
)


def _accuracy(value: dict | None) -> tuple[float | None, float | None, float | None]:
    if not value:
        return None, None, None
    return value["accuracy"], value["ci95_low"], value["ci95_high"]


def claims(records: dict) -> dict:
    """One run's headline numbers from its stage records: `{key, key_low, key_high}` for each claim (None
    where the stage did not run or the number is undefined), plus the patching site and the ablation's
    layer."""
    r = {name: rec.get("results", {}) for name, rec in records.items()}
    ev, probe, restart = r.get("evaluate", {}), r.get("probe", {}), r.get("restart", {})
    found = {}

    def put(key, value, low=None, high=None):
        found.update({key: value, f"{key}_low": low, f"{key}_high": high})

    put("sums", *_accuracy(ev.get("memento/sums_teacher_forced")))
    for mode in ("memento", "restart", "full_attention"):
        put(f"answer_{mode.split('_')[0]}", *_accuracy(ev.get(f"{mode}/passcode_answer")))
    for key, name in (("restart_drop", "sums"), ("answer_restart_drop", "passcode_answer")):
        result = restart.get(name)
        if result:
            low, high = result["drop_ci95"]
            put(key, -100 * result["drop"], -100 * high, -100 * low)
        else:
            put(key, None)
    for name in ("direct", "masked_d1", "masked_d2", "causal_control", "restart_kv"):
        put(f"probe_{name}", *_accuracy(probe.get(name)))
    found["probe_budget"] = (probe.get("masked_d1") or {}).get("n_train")
    for name in ("direct", "masked_d1", "masked_d2", "restart_kv"):
        put(f"bits_{name}", (probe.get("bits", {}).get(name) or {}).get("bits_leaked"))
    top = (r.get("patch") or {}).get("top_layer_head") or {}
    put("patch_top_effect", top.get("effect"), top.get("effect_low"), top.get("effect_high"))
    found["patch_top_site"] = f"layer {top['layer']} head {top['kv_head']}" if top.get("effect") is not None else None
    shares = {k: v for k, v in (r.get("ablate") or {}).get("by_layer", {}).items()
              if k.startswith("restart/") and not k.endswith("/all") and v["restart_share"] is not None}
    best = max(shares, key=lambda k: shares[k]["restart_share"], default=None)
    put("ablate_top_share", shares[best]["restart_share"] if best else None)
    found["ablate_top_layer"] = best.split("/")[1] if best else None
    put("kv_peak_ratio", r.get("kv", {}).get("peak_ratio"))
    return found


def learned(found: dict) -> dict[str, bool]:
    """What the run's model learned: the running sums (>= 90%) and the passcode (answer above chance)."""
    return {"sums": (found.get("sums") or 0) >= SUMS_TARGET,
            "answer": found.get("answer_memento_low") is not None and found["answer_memento_low"] > CHANCE}


def machine() -> dict:
    """What floats depend on: the torch build, the CPU's vector extensions torch uses, its threads."""
    import torch

    return {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "python": platform.python_version()}


# -- numbers as text --------------------------------------------------------------------------------------------

def _number(value: float | None, percent: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.2f}"


def _with_interval(found: dict, key: str, percent: bool = True) -> str:
    value, low, high = found.get(key), found.get(f"{key}_low"), found.get(f"{key}_high")
    if value is None:
        return "not measured"
    if low is None:
        return _number(value, percent)
    scale, unit, digits = (100, "%", 1) if percent else (1, "", 2)
    return f"{scale * value:.{digits}f}{unit} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def seed_range(seeds: pd.DataFrame | None, key: str) -> tuple[float, float, float, int] | None:
    """(median, min, max, number of seeds) of a claim across the committed seeds, or None."""
    if seeds is None or key not in seeds:
        values = None
    else:
        values = pd.to_numeric(seeds[seeds.statistic == "seed"][key], errors="coerce").dropna()
    if values is None or not len(values):
        return None
    return float(values.median()), float(values.min()), float(values.max()), len(values)


def _against(found: dict, seeds: pd.DataFrame | None, claim: Claim) -> str:
    """'median [min, max] of K seeds; this run: inside / below / above'."""
    spread = seed_range(seeds, claim.key)
    value = found.get(claim.key)
    if spread is None or value is None:
        return "-"
    median, low, high, k = spread
    shown = lambda x: round(x, 3 if claim.percent else 2)  # compared as printed: -0.001 and -0.004 are both -0.00
    where = ("inside" if shown(low) <= shown(value) <= shown(high) else "**below**" if shown(value) < shown(low)
             else "**above**")
    return (f"{_number(median, claim.percent)} [{_number(low, claim.percent)}, {_number(high, claim.percent)}] "
            f"({k} seeds): {where}")


def report_text(config, records: dict, seeds: pd.DataFrame | None = None) -> str:
    """REPORT.md of one run (`config`: its `ReproduceConfig`; `seeds`: the committed multi-seed table, if any)."""
    r = {name: rec.get("results", {}) for name, rec in records.items()}
    found, knows = claims(records), learned(claims(records))
    kv = r.get("kv", {})
    command = (f"leakage reproduce --preset {config.preset} --out {config.out} --seed {config.seed}"
               + (" --extras" if config.extras else ""))
    box = r.get("train", {}).get("machine") or machine()
    lines = [f"# Memento leakage: `{config.preset}` reproduction, seed {config.seed}", "",
             f"Made by `{command}`; every number links to the file it came from (stage records: `stages/`). Model: a "
             f"4-layer Qwen3-architecture transformer trained from scratch ({config.plan.train} preset) on the "
             f"passcode task, {config.plan.n_blocks} blocks of 5 digits with running-sum mementos and a 5-digit "
             "passcode in block 1 that enters no memento. Machine: "
             f"torch {box['torch']}, {box['cpu']} ({box['cpu_capability']}), {box['threads']} threads: floats "
             "differ across CPUs, so the same seed on another machine lands elsewhere inside the seed range.", ""]
    if seeds is not None:
        lines += ["The last column puts this run beside the committed seeds (`figures/seeds/`): a number outside "
                  "their range is marked.", ""]
    lines += ["## The paper's results at toy scale", "",
              "| result | paper | this run [95% CI over examples; probes: over held-out passcodes] | "
              "committed seeds: median [range] | from |",
              "|---|---|---|---|---|"]
    by_key = {c.key: c for c in CLAIMS}

    def row(key: str, paper: str, source: str, note: str = "") -> None:
        claim = by_key[key]
        lines.append(f"| {claim.label} | {paper} | {_with_interval(found, key, claim.percent)}{note} | "
                     f"{_against(found, seeds, claim)} | {source} |")

    row("sums", f"{PAPER['toy_task_accuracy']:.0%} (toy, 10 blocks)", "evaluate.json",
        "" if knows["sums"] else f" (below the {SUMS_TARGET:.0%} target: the running sums were not learned)")
    for key, paper in (("probe_masked_d1", f"{PAPER['toy_probe_masked_d1']:.1%} (toy)"),
                       ("probe_masked_d2", f"{PAPER['toy_probe_masked_d2']:.1%} (toy)"),
                       ("probe_direct", f"{PAPER['qwen3_8b_probe_direct']:.1%} (Qwen3-8B)")):
        measured = found.get(key) is not None and found.get("probe_budget")
        row(key, paper, "probe.csv", f" ({found['probe_budget']:,} probe-training traces)" if measured else "")
    for key in ("bits_masked_d1", "bits_masked_d2", "bits_direct", "bits_restart_kv"):
        if found.get(key) is not None:
            row(key, "-", "probe.csv")
    sums_ablation = r.get("restart", {}).get("sums")
    if sums_ablation:
        row("restart_drop", f"{PAPER['qwen3_8b_restart_drop_pp']} points (Qwen3-8B, AIME24)", "restart.json",
            f" (memento text identical; sign test over {sums_ablation['examples']} examples, "
            f"p = {sums_ablation['sign_test_p']:.2g})")
    if kv:
        row("kv_peak_ratio", PAPER["peak_kv_reduction"], "kv_sawtooth.png",
            f" ({kv['vanilla_peak']} -> {kv['memento_peak']} tokens; AUC {kv['auc_ratio']:.2f}x, paper "
            f"{PAPER['kv_auc_reduction']})")
    lines += ["", "## Beyond the paper", ""]
    if found.get("bits_masked_d1") is not None:
        lines.append("* Bits leaked: the MDL online code length of the passcodes given the probe's features, subtracted "
                     "from the uniform code (16.6 bits per 5-digit passcode), per passcode: a leak measure without a "
                     "probe budget (the probe learns as the code is sent; probe.csv, rows `bits`).")
    if r.get("probe"):
        budget = f"{found['probe_budget']:,}" if found.get("probe_budget") else "?"
        lines.append(f"* Probe controls ({budget} probe-training traces): causal control (block 0's memento) "
                     f"{_with_interval(found, 'probe_causal_control')}, "
                     f"restart KV {_with_interval(found, 'probe_restart_kv')} (chance 10%; probe.csv, "
                     "probe_conditions.png).")
    if r.get("evaluate"):
        lines.append(f"* Passcode answer digits: memento {_with_interval(found, 'answer_memento')}, restart "
                     f"{_with_interval(found, 'answer_restart')}, full attention {_with_interval(found, 'answer_full')} "
                     "(chance 10%: no memento text carries it; intervals over examples; evaluate.json)."
                     + (f" Committed seeds: memento {_against(found, seeds, by_key['answer_memento'])}."
                        if seeds is not None else ""))
    if (r.get("patch") or r.get("ablate")) and not knows["answer"]:
        lines.append(f"* KV patching and ablation: the model did not learn to read the passcode (answer digits "
                     f"{_with_interval(found, 'answer_memento')}, chance 10%), so there is no use of the channel for "
                     "them to locate; their tables are in patch.csv and ablate.csv, and they are not reported as "
                     "findings.")
    else:
        causal = (("patch", "patch_top_effect", "* KV patching: the twin's cache does not move the answer's logit "
                   "difference at all, so no layer x head's share of it is defined (patch.csv).",
                   lambda: f"* KV patching (twin passcode, identical mementos; 0 = clean, 1 = twin's cache): "
                           f"{found['patch_top_site']} carries {_with_interval(found, 'patch_top_effect', False)} "
                           "of the effect (patch.csv, patch.png). Where the channel lives varies across seeds "
                           "(`figures/seeds/`)."),
                  ("ablate", "ablate_top_share", "* KV ablation: the restart KV of every layer at once does not "
                   "lower the answer: there is no restart drop for a layer to explain (ablate.csv).",
                   lambda: f"* KV ablation: splicing in the restart KV of layer {found['ablate_top_layer']} alone "
                           f"explains {100 * found['ablate_top_share']:.0f}% of the all-layer restart drop "
                           "(ablate.csv, ablate.png)."))
        for stage, key, undefined, defined in causal:
            if r.get(stage):
                lines.append(undefined if found[key] is None else defined())
    erase = r.get("erase")
    if erase:
        lines.append(f"* LEACE on the retained KV: probe {100 * erase['leace']['probe_accuracy']:.1f}%, answer "
                     f"{100 * erase['leace']['answer_accuracy']:.1f}%; a random subspace of the same rank: probe "
                     f"{100 * erase['random']['probe_accuracy']:.1f}%, answer {100 * erase['random']['answer_accuracy']:.1f}% "
                     "(erase.csv, erase.png).")
    control = r.get("control")
    if control:
        lines.append(f"* Restart-trained control under restart decoding: running sums teacher-forced "
                     f"{_ci(control.get('restart/sums_teacher_forced'))}, free-running "
                     f"{_ci(control.get('restart/sums_free_running'))} (control.json).")
    lines += ["", "## Stages", "", "| stage | seconds | status | files |", "|---|---|---|---|"]
    for name, rec in records.items():
        status = "failed: " + rec["error"].splitlines()[0] if "error" in rec else "ok"
        seconds = f"{rec.get('seconds', 0):.0f}"
        trained = rec.get("results", {}).get("train_wall_seconds") if name == "train" else None
        if trained and trained > 2 * rec.get("seconds", 0):  # a finished run in runs_dir was reused
            seconds += f" (model reused; its training took {trained:.0f})"
        lines.append(f"| {name} | {seconds} | {status} | {', '.join(rec.get('files', []))} |")
    total = sum(rec.get("seconds", 0) for rec in records.values())
    lines += ["", f"Total {total:.0f} s in this run's stages (stages skipped as done count the time they took "
              "when they ran). `docs/results.md` has the full-size experiments behind each line."]
    return "\n".join(lines) + "\n"


def _ci(value: dict | None) -> str:
    """An accuracy record (`Accuracy.as_dict`) as 'x% [low, high]' (`_with_interval`)."""
    accuracy, low, high = _accuracy(value)
    return _with_interval({"x": accuracy, "x_low": low, "x_high": high}, "x")


# -- across seeds ---------------------------------------------------------------------------------------------

def seeds_table(per_seed: dict[int, dict]) -> pd.DataFrame:
    """One row per seed (`statistic` "seed") with every claim and what the seed's model learned
    (`learned_sums`, `learned_answer`), then the median, min, max, mean and the 95% interval of the mean
    across seeds (a t interval: seeds are the unit of independence; none from one seed). Claims that need the
    channel (`Claim.needs_answer`) are aggregated over the seeds whose answer is above chance only."""
    rows = [{"statistic": "seed", "seed": seed, **{f"learned_{k}": v for k, v in learned(found).items()}, **found}
            for seed, found in sorted(per_seed.items())]
    frame = pd.DataFrame(rows)
    claims_here = [c for c in CLAIMS if c.key in frame]
    summary = []
    for name in ("median", "min", "max", "mean", "mean_ci95_low", "mean_ci95_high"):
        row = {"statistic": name}
        for claim in claims_here:
            kept = frame[frame.learned_answer] if claim.needs_answer else frame
            values = pd.to_numeric(kept[claim.key], errors="coerce").dropna().to_numpy()
            key = claim.key
            if not len(values) or (name.startswith("mean_ci95") and len(values) < 2):
                continue
            if name.startswith("mean_ci95"):
                low, high = mean_interval(values)
                if claim.bounds:  # a t interval knows no bounds: an accuracy's stops at 0 and 1, a drop's at -100 points
                    low, high = max(low, claim.bounds[0]), min(high, claim.bounds[1])
                row[key] = low if name.endswith("low") else high
            else:
                row[key] = float(getattr(pd.Series(values), name)())
        summary.append(row)
    return pd.concat([frame, pd.DataFrame(summary)], ignore_index=True)


def _holds(claim: Claim, found: dict) -> bool | None:
    value, low, high = found.get(claim.key), found.get(f"{claim.key}_low"), found.get(f"{claim.key}_high")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if claim.threshold is not None:
        return value > claim.threshold if claim.above else value <= claim.threshold
    if "at chance" in claim.statement:
        return low is not None and low <= CHANCE <= high
    if "above chance" in claim.statement:
        return low is not None and low > CHANCE
    if "drop" in claim.statement:
        return high is not None and high < 0
    return None


def seeds_text(per_seed: dict[int, dict], table: pd.DataFrame, command: str, seconds: float) -> str:
    """SEEDS.md: each claim as a statement about seeds, with median and range."""
    k = len(per_seed)
    lines = [f"# The main job across {k} training seeds", "",
             f"Made by `{command}` ({seconds / 60:.0f} min on this machine); one folder per seed "
             "(`seed{S}/`, each with its REPORT.md), per-seed numbers and their aggregate in `seeds.csv`. A finding "
             "is a statement about seeds: how many of them show it, with the median and range across seeds; the "
             "interval of the mean is a t interval over seeds.", "",
             "| claim | holds in | median [range] | mean [95% CI over seeds] | per seed |", "|---|---|---|---|---|"]
    stats = table.set_index("statistic")
    reads = [seed for seed, found in per_seed.items() if learned(found)["answer"]]
    for claim in CLAIMS:
        if claim.key not in table:
            continue
        verdicts = [_holds(claim, found) for found in per_seed.values()]
        counted = [v for v in verdicts if v is not None]
        holds = f"{sum(counted)} of {len(counted)} seeds: {claim.statement}" if claim.statement and counted else "-"
        if claim.needs_answer:
            holds = f"defined in the {len(reads)} of {k} seeds whose answer is above chance"
        values = [per_seed[s].get(claim.key) if not claim.needs_answer or s in reads else "not learned"
                  for s in sorted(per_seed)]
        spread = (f"{_number(stats.loc['median', claim.key], claim.percent)} "
                  f"[{_number(stats.loc['min', claim.key], claim.percent)}, "
                  f"{_number(stats.loc['max', claim.key], claim.percent)}]"
                  if not pd.isna(stats.loc["median", claim.key]) else "-")
        mean = (f"{_number(stats.loc['mean', claim.key], claim.percent)} "
                f"[{_number(stats.loc['mean_ci95_low', claim.key], claim.percent)}, "
                f"{_number(stats.loc['mean_ci95_high', claim.key], claim.percent)}]"
                if not pd.isna(stats.loc["mean_ci95_low", claim.key]) else "-")
        lines.append(f"| {claim.label} | {holds} | {spread} | {mean} | "
                     f"{', '.join(v if isinstance(v, str) else _number(v, claim.percent) for v in values)} |")
    sites = [per_seed[seed].get("patch_top_site") or "undefined" for seed in reads]
    layers = [per_seed[seed].get("ablate_top_layer") or "undefined" for seed in reads]
    if reads:
        lines += ["", f"Where the channel lives, in the {len(reads)} seeds whose answer is above chance: the largest "
                  f"patching effect sits at {_counts(sites)}; the layer whose restart KV explains most of the drop: "
                  f"{_counts(layers)}."]
    else:
        lines += ["", "No seed's model reads the passcode above chance: patching and ablation have no channel to "
                  "locate in any of them."]
    return "\n".join(lines) + "\n"


def _counts(items: list[str]) -> str:
    counted = pd.Series(items).value_counts()
    return ", ".join(f"{name} in {n} seed{'s' * (n > 1)}" for name, n in counted.items())


def read_seeds(path: str | Path) -> pd.DataFrame | None:
    """A committed `seeds.csv`, or None when there is none."""
    path = Path(path)
    return pd.read_csv(path) if path.is_file() else None
