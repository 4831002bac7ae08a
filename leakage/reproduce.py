"""`leakage reproduce`: the main job. Trains (or reuses) a toy Memento model and measures the leak.

One model serves every stage: the `passcode` task (running-sum blocks, as in the paper's toy, plus a
passcode in block 1 that enters no memento), so the same checkpoint gives the paper's task accuracy, the
restart ablation, the probes and the causal experiments. Stages, in order:

    train     two-stage SFT (reused when `runs_dir` holds a run of the same config; resumed if stopped)
    evaluate  running-sum and passcode accuracy under memento, restart and full-attention decoding
    kv        the KV cache while the model writes a trace (its sums, mementos, answer), vanilla vs memento (peak, AUC)
    probe     the passcode probe: direct, masked, causal control, control task, restart KV, random init
    restart   the restart ablation with the memento text held identical (running sums and answer)
    patch     KV patching maps (layer x KV head, layer x position kind)
    ablate    KV ablation of the retained positions (resample, mean, restart, zero)
    erase     LEACE vs a random subspace (`paper` preset or `--extras`)
    control   a restart-trained control model under restart decoding (`paper` preset or `--extras`)

Every analysis stage is its runner (`leakage.analysis.<name>.run`) on the trained model, writing its
CSV, JSON and figures into `out` exactly as the CLI verb would; each stage also writes a record
`out/stages/NAME.json` (results, files, seconds, and the key of everything it depends on), and a rerun
skips a stage whose record has the same key. A stage that fails is recorded with its error and the
others still run. `REPORT.md` puts the paper's numbers beside ours, each with its interval and the file
it came from.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from leakage.config import EVICTION_PRESETS, EvictionConfig
from leakage.io import atomic_write_json, atomic_write_text
from leakage.report import claims, machine, read_seeds, report_text, seeds_table, seeds_text
from leakage.training.tasks import TaskConfig

@dataclass(frozen=True)
class ReproducePlan:
    """The size of every stage: a named preset.

    train: the training preset (`leakage.training.train.TRAIN_PRESETS`). n_blocks: blocks per trace
    (passcode in block 1). n_eval: validation examples per accuracy. probe_traces / probe: the probe's
    dataset and its preset (`leakage.analysis.probe.PROBE_PRESETS`). causal_n: example pairs of the causal
    stages. extras: also run `erase`, the restart-trained control and the per-layer probes.
    """

    train: str
    n_blocks: int
    n_eval: int
    probe_traces: int
    probe: str
    causal_n: int
    extras: bool = False


PLANS: dict[str, ReproducePlan] = {
    "smoke": ReproducePlan(train="smoke", n_blocks=3, n_eval=8, probe_traces=240, probe="smoke", causal_n=8),
    "fast": ReproducePlan(train="fast", n_blocks=4, n_eval=256, probe_traces=6_000, probe="mlp", causal_n=256),
    "paper": ReproducePlan(train="paper", n_blocks=10, n_eval=512, probe_traces=50_000, probe="mlp", causal_n=512,
                           extras=True),
}


@dataclass(frozen=True)
class ReproduceConfig:
    """The main job (see the module docstring).

    preset: smoke (seconds, the tests), fast (the README's job: under 15 minutes on 2 CPU cores) or paper.
    out: folder for REPORT.md, its figures, tables and stage records.
    runs_dir: folder of trained models (reused when the config matches).
    extras: also run the expensive stages (erase, restart-trained control) at this preset.
    seed: training, example and probe seed.
    overwrite: replace what a reproduce of another preset, seed or extras wrote in --out (only its files).
    seeds: train and measure this many models (seeds seed, seed+1, ...), each in --out/seed{S}/, then
        SEEDS.md and seeds.csv across them.
    seed_ranges: the committed multi-seed table a single run's REPORT.md compares itself with.
    """

    preset: str = "fast"
    out: str = "figures/reproduce"
    runs_dir: str = "runs"
    extras: bool = False
    seed: int = 0
    overwrite: bool = False
    seeds: int = 1
    seed_ranges: str = "figures/seeds/seeds.csv"

    def __post_init__(self):
        if self.preset not in PLANS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PLANS)}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")

    @property
    def owner(self) -> dict:
        """What the results in `out` are of: the settings a rerun into the same folder must share."""
        return {"preset": self.preset, "seed": self.seed, "extras": self.extras, "seeds": self.seeds}

    @property
    def plan(self) -> ReproducePlan:
        return replace(PLANS[self.preset], extras=PLANS[self.preset].extras or self.extras)

    @property
    def task(self) -> TaskConfig:
        """The evaluation task (fixed-length blocks); training adds the curriculum."""
        return TaskConfig(task="passcode", n_blocks=self.plan.n_blocks, passcode_block=1)


# -- stages ----------------------------------------------------------------------------------------------

@dataclass
class Context:
    """What the stages share: the config, the output folder, the command, and the model once `train` has run."""

    config: ReproduceConfig
    out: Path
    checkpoint: Path | None = None

    @property
    def command(self) -> str:
        config = self.config
        return (f"leakage reproduce --preset {config.preset} --out {config.out} --runs-dir {config.runs_dir} "
                f"--seed {config.seed}" + (" --extras" if config.extras else ""))

    @property
    def model(self) -> str:
        """The trained model's checkpoint (what every analysis stage's spec names)."""
        if self.checkpoint is None:
            raise RuntimeError("no trained model: the train stage did not finish")
        return str(self.checkpoint)

    def path(self, name: str) -> Path:
        return self.out / name

    def training(self, restart: bool = False):
        """(run folder, `RunConfig`) of the main job's model (or of its restart-trained control)."""
        from leakage.training.tasks import TRAINING_SHORT_BLOCK_RATE
        from leakage.training.train import RunConfig, train_preset

        config = self.config
        name = f"reproduce-passcode{config.plan.n_blocks}{'-restart' if restart else ''}-{config.preset}-seed{config.seed}"
        run = RunConfig(task=replace(config.task, short_block_rate=TRAINING_SHORT_BLOCK_RATE),
                        preset=train_preset(config.plan.train), eviction=EvictionConfig(restart=restart),
                        seed=config.seed)
        return Path(config.runs_dir) / name, run

    def causal(self, **experiment):
        """The causal stages' `CausalSpec` on the trained model (`experiment`: extra `CausalExperiment` fields)."""
        from leakage.analysis.twins import CausalExperiment, CausalSpec

        return CausalSpec(self.model, self.config.task, EvictionConfig(),
                          CausalExperiment(n=self.config.plan.causal_n, seed=self.config.seed, **experiment))


def stage_train(ctx: Context) -> dict:
    import pandas as pd

    from leakage.plotting import plot_training_curves
    from leakage.training.train import TrainedRun, train_or_reuse

    config = ctx.config
    start = time.perf_counter()
    path, trained = ctx.training()
    ctx.checkpoint = train_or_reuse(trained, path)
    run = TrainedRun(ctx.checkpoint.parent)
    table = pd.DataFrame(run.metrics())
    atomic_write_text(ctx.path("training.csv"), table.to_csv(index=False))
    plot_training_curves(table.to_dict("records"), ctx.path("training.png"),
                         title=f"two-stage Memento SFT ({config.plan.train} preset)")
    return {"checkpoint": str(ctx.checkpoint), "seconds_here": time.perf_counter() - start,
            "train_wall_seconds": sum(s.get("wall_seconds") or 0 for s in run.stage_records().values()),
            "machine": machine(), "files": ["training.csv", "training.png"]}


EVALUATIONS = (("sums_teacher_forced", "sums", "teacher_forced"), ("sums_free_running", "sums", "free_running"),
               ("passcode_answer", "answer_digits", "teacher_forced"))
"""What the main job scores: the running sums (the paper's task accuracy) and the passcode's answer digits."""


def stage_evaluate(ctx: Context) -> dict:
    from leakage.analysis import evaluation

    spec = evaluation.EvaluationSpec(ctx.model, ctx.config.task, n=ctx.config.plan.n_eval, seed=ctx.config.seed + 1,
                                     evaluations=EVALUATIONS)
    record = evaluation.run(spec, ctx.path("evaluate"), command=ctx.command)
    return {k: v for k, v in record.results.items() if "/" in k} | {"files": ["evaluate.csv", "evaluate.json"]}


def stage_kv(ctx: Context) -> dict:
    from leakage.engine.model import load_model
    from leakage.memento.kv import simulate_kv
    from leakage.plotting import plot_kv_sawtooth
    from leakage.training.evaluate import free_run_results
    from leakage.training.tasks import make_example

    model, tokenizer = load_model(ctx.model)
    example = make_example(ctx.config.task, tokenizer, ctx.config.seed + 2, 0, "val")
    # decoded as the free-running evaluation decodes: the block digits and passcode (the task's random inputs,
    # which the model is not trained to draw) are given, the model writes every sum, memento and the answer
    out = free_run_results(model, tokenizer, [example], EvictionConfig())[0]
    fed = out.ids[:len(out.kv.cached_tokens)]
    vanilla = simulate_kv(fed, tokenizer, EVICTION_PRESETS["vanilla"], prompt_len=out.prompt_len,
                          plain_prompt=False, strict=False)
    plot_kv_sawtooth({"vanilla": vanilla, "memento": out.kv}, ctx.path("kv_sawtooth.png"),
                     title="KV cache while the trained model writes a trace (block digits given)")
    return {"generated_tokens": len(out.response), "malformed_markers": len(out.malformed),
            "vanilla_peak": vanilla.peak, "memento_peak": out.kv.peak, "peak_ratio": vanilla.peak / out.kv.peak,
            "vanilla_auc": vanilla.auc, "memento_auc": out.kv.auc, "auc_ratio": vanilla.auc / out.kv.auc,
            "text": tokenizer.decode(out.response), "files": ["kv_sawtooth.png"]}


PROBED = {"direct": ("direct", 0, "all"), "masked_d1": ("masked", 1, "all"), "masked_d2": ("masked", 2, "all"),
          "causal_control": ("causal_control", -1, "all"), "restart_kv": ("restart_kv", 1, "all"),
          "random_init": ("random_init", 1, "all"), "control_task": ("control_task", 1, "all")}
"""The probe rows the report quotes: name -> (condition, distance, layer)."""


BITS_OF = ("direct", "masked_d1", "masked_d2", "control_task", "restart_kv")
"""The probe conditions whose MDL code length (bits leaked per passcode) the main job measures."""


def stage_probe(ctx: Context) -> dict:
    from leakage.analysis import probing
    from leakage.analysis.probe import probe_preset

    plan, seed = ctx.config.plan, ctx.config.seed
    experiment = probing.ProbeExperiment(n_blocks=plan.n_blocks, passcode_block=1, per_layer=plan.extras, mdl=False,
                                         precision=False, spectrum=plan.extras, late_timing=plan.extras, max_keep=0,
                                         checkpoints=0, seed=seed, bits=True, curve_conditions=BITS_OF)
    spec = probing.ProbeSpec(ctx.model, task="passcode", n=plan.probe_traces, trace_seed=seed, experiment=experiment,
                             probe=probe_preset(plan.probe))
    record = probing.run(spec, ctx.path("probe"), command=ctx.command)
    rows = record.rows
    engine = rows[rows["timing"].fillna("engine") == "engine"] if "timing" in rows.columns else rows
    found = {}
    for name, (condition, distance, layer) in PROBED.items():
        match = engine[(engine.condition == condition) & (engine.distance == distance) & (engine.layer == layer)]
        if len(match):
            found[name] = {**{k: float(match.iloc[0][k]) for k in ("accuracy", "ci95_low", "ci95_high")},
                           "n_train": int(match.iloc[0]["n_train"])}
    bits = rows[rows.condition == "bits"] if "bits_leaked" in rows.columns else rows.iloc[:0]
    found["bits"] = {r["of"]: {"bits_leaked": float(r["bits_leaked"]), "bits_per_passcode": float(r["bits_per_passcode"]),
                              "uniform_bits_per_passcode": float(r["uniform_bits_per_passcode"]), "rows": int(r["mdl_rows"])}
                     for _, r in bits.iterrows()}
    return {**found, "traces": plan.probe_traces, "probe": spec.probe.kind,
            "files": [Path(f).name for f in record.files]}


def stage_restart(ctx: Context) -> dict:
    from leakage.analysis import restart

    results = {}
    for name, unit, stem in (("sums", "sums", "restart"), ("passcode_answer", "answer_digits", "restart_answer")):
        spec = restart.RestartSpec(ctx.model, ctx.config.task, n=ctx.config.plan.n_eval, seed=ctx.config.seed + 1,
                                   unit=unit)
        results[name] = restart.run(spec, ctx.path(stem), command=ctx.command).results
    return {**results, "files": ["restart.csv", "restart.json", "restart_answer.csv", "restart_answer.json"]}


def stage_patch(ctx: Context) -> dict:
    from leakage.analysis import patch_maps

    record = patch_maps.run(ctx.causal(), ctx.path("patch"), command=ctx.command)
    return {**record.results, "files": ["patch.csv", "patch.json", "patch.png"]}


def stage_ablate(ctx: Context) -> dict:
    from leakage.analysis import ablation

    record = ablation.run(ctx.causal(), ctx.path("ablate"), command=ctx.command)
    return {**record.results, "files": ["ablate.csv", "ablate.json", "ablate.png"]}


def stage_erase(ctx: Context) -> dict:
    from leakage.analysis import erasure

    record = erasure.run(ctx.causal(reference=8 * ctx.config.plan.causal_n), ctx.path("erase"), command=ctx.command)
    return {**record.results, "files": ["erase.csv", "erase.json", "erase.png"]}


def stage_control(ctx: Context) -> dict:
    from leakage.analysis import evaluation
    from leakage.training.train import train_or_reuse

    config = ctx.config
    path, trained = ctx.training(restart=True)
    final = train_or_reuse(trained, path)
    spec = evaluation.EvaluationSpec(str(final), config.task, n=config.plan.n_eval, seed=config.seed + 1,
                                     evaluations=EVALUATIONS[:2])
    record = evaluation.run(spec, ctx.path("control"), command=ctx.command)
    return {"checkpoint": str(final), **{k: v for k, v in record.results.items() if k.startswith("restart/")},
            "files": ["control.csv", "control.json"]}


STAGES: dict[str, Callable[[Context], dict]] = {
    "train": stage_train, "evaluate": stage_evaluate, "kv": stage_kv, "probe": stage_probe,
    "restart": stage_restart, "patch": stage_patch, "ablate": stage_ablate, "erase": stage_erase,
    "control": stage_control,
}
EXTRAS = ("erase", "control")


STAGE_CODE = {"train": ("leakage.training.train",), "evaluate": ("leakage.analysis.evaluation",),
              "kv": ("leakage.engine.decode", "leakage.memento.kv", "leakage.training.evaluate", "leakage.plotting"),
              "probe": ("leakage.analysis.probing",), "restart": ("leakage.analysis.restart",),
              "patch": ("leakage.analysis.patch_maps",), "ablate": ("leakage.analysis.ablation",),
              "erase": ("leakage.analysis.erasure",),
              "control": ("leakage.analysis.evaluation", "leakage.training.train")}
"""The modules whose code (with everything they import) computes each stage's result."""


def _key(config: ReproduceConfig, name: str, checkpoint: Path | None) -> str:
    """What a stage's result depends on: the plan, the seed, the trained weights (not for `train`, which makes
    them) and the code that computes it (`leakage.provenance.code_fingerprint`)."""
    from leakage.engine.model import checkpoint_sha256
    from leakage.provenance import code_fingerprint

    digest = checkpoint_sha256(checkpoint) if checkpoint is not None and name != "train" else ""
    code = [code_fingerprint(module) for module in STAGE_CODE[name]]
    text = json.dumps([name, asdict(config.plan), config.seed, digest, code], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


OWNER = "reproduce.json"
"""The file in `--out` that says which settings its results are of (`ReproduceConfig.owner`)."""


def claim(config: ReproduceConfig) -> Path:
    """The output folder, refused when it holds another reproduce's results (other preset, seed or extras)
    unless `overwrite`, which removes exactly that reproduce's files, or files no reproduce wrote."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    owner_file = out / OWNER
    if present and not owner_file.is_file():
        raise ValueError(f"--out {out} holds files that no `leakage reproduce` wrote ({present[:5]}); choose another "
                         "--out")
    if owner_file.is_file():
        old = json.loads(owner_file.read_text(encoding="utf-8"))
        if old != config.owner:
            changed = sorted(k for k in set(old) | set(config.owner) if old.get(k) != config.owner.get(k))
            if not config.overwrite:
                raise ValueError(f"--out {out} holds the results of a reproduce with other settings (differs in "
                                 f"{changed}: {old}); pass --overwrite to replace them, or choose another --out")
            for record in sorted((out / "stages").glob("*.json")):
                for name in json.loads(record.read_text(encoding="utf-8")).get("files", []):
                    (out / name).unlink(missing_ok=True)
                record.unlink()
            (out / "REPORT.md").unlink(missing_ok=True)
    (out / "stages").mkdir(parents=True, exist_ok=True)
    atomic_write_json(owner_file, config.owner)
    return out


def _still_trained(ctx: Context, old: dict) -> bool:
    """Whether the model a `train` record names is still the run this config trains, by this code."""
    from leakage.training.train import TrainedRun

    path, run = ctx.training()
    recorded = Path(old.get("results", {}).get("checkpoint", ""))
    return recorded.resolve() == (path / "final").resolve() and TrainedRun(path).holds(run)


def reproduce(config: ReproduceConfig, progress: Callable | None = None,
              log: Callable[[str], None] = lambda _: None) -> dict:
    """Run every stage of the plan (skipping those already done with the same key); write REPORT.md. With
    `config.seeds` > 1, one such run per seed, then the tables across seeds (`reproduce_seeds`).

    `progress(iterable, desc)` wraps the stage loop (tqdm). Returns {stage: record} ({seed: {stage: record}})."""
    if config.seeds > 1:
        return reproduce_seeds(config, progress, log)
    out = claim(config)
    ctx = Context(config, out)
    names = [n for n in STAGES if n not in EXTRAS or config.plan.extras]
    records = {}
    for name in (progress(names, desc="reproduce") if progress else names):
        path = out / "stages" / f"{name}.json"
        key = _key(config, name, ctx.checkpoint)
        if path.is_file():
            old = json.loads(path.read_text())
            trained = name != "train" or _still_trained(ctx, old)
            if (old.get("key") == key and "error" not in old and trained
                    and all((out / f).is_file() for f in old.get("files", []))):
                records[name] = old
                if name == "train":
                    ctx.checkpoint = Path(old["results"]["checkpoint"])
                log(f"[{name}] done before (same key {key}): skipped")
                continue
        log(f"[{name}] running")
        start = time.perf_counter()
        try:
            results = STAGES[name](ctx)
            record = {"key": key, "results": results, "files": results.pop("files", []) if isinstance(results, dict)
                      else [], "seconds": time.perf_counter() - start}
        except Exception as err:  # a failed stage is reported; the others still run
            record = {"key": key, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                      "seconds": time.perf_counter() - start}
            log(f"[{name}] FAILED: {record['error']}")
        atomic_write_json(path, record)
        records[name] = record
    write_report(config, records)
    return records


def reproduce_seeds(config: ReproduceConfig, progress: Callable | None = None,
                    log: Callable[[str], None] = lambda _: None) -> dict:
    """The main job for seeds config.seed .. config.seed + seeds - 1, each in `out/seed{S}/`, then `seeds.csv`
    (per-seed claims, median, range, the interval of the mean over seeds) and `SEEDS.md` in `out`."""
    out = claim(config)
    per_seed, all_records = {}, {}
    for seed in range(config.seed, config.seed + config.seeds):
        log(f"== seed {seed}")
        one = replace(config, seed=seed, seeds=1, out=str(out / f"seed{seed}"), overwrite=False, seed_ranges="")
        all_records[seed] = reproduce(one, progress, log)
        per_seed[seed] = claims(all_records[seed])
    table = seeds_table(per_seed)
    atomic_write_text(out / "seeds.csv", table.to_csv(index=False))
    command = (f"leakage reproduce --preset {config.preset} --seeds {config.seeds} --seed {config.seed} --out "
               f"{config.out}" + (" --extras" if config.extras else ""))
    seconds = sum(rec.get("seconds", 0) for records in all_records.values() for rec in records.values())
    atomic_write_text(out / "SEEDS.md", seeds_text(per_seed, table, command, seconds))
    return all_records


def write_report(config: ReproduceConfig, records: dict) -> Path:
    """REPORT.md of this run, beside the committed seed range (`config.seed_ranges`) when there is one."""
    path = Path(config.out) / "REPORT.md"
    atomic_write_text(path, report_text(config, records, read_seeds(config.seed_ranges)))
    return path
