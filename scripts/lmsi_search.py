"""Issue 16's search, on the dev split only: which LMSI recipe moves SmolLM2-135M-Instruct on arithmetic, with
controls that tell a model limit from a pipeline fault.

Every arm is the quickstart (gin_configs/runs/quickstart.gin) with a few gin bindings changed. All arms train on the
same sampled pool (one sample stage, copied into each arm's run_dir), so arms differ only in what they change. Each
trained model is evaluated on the 200 dev questions (few-shot CoT greedy and zero-shot CoT greedy) and compared with
the base model on the same questions (Newcombe interval, exact McNemar p). Controls:
- no_op: one step at learning rate 0; the whole train -> export -> reload -> eval path must give the base model's
  predictions exactly;
- oracle: the paths whose answer matches the pool's hidden gold (the most this sampling budget can teach);
- anti_oracle: wrong paths only, as many as the vote kept (must hurt).
`--setting` picks a difficulty of the arithmetic task (SETTINGS); results go under "settings" -> its name.

    XLA_FLAGS= python scripts/lmsi_search.py --setting two_digit_add --arms paper,zero_shot,no_op,oracle
    # ~10 min for the pool's samples and the base model's dev eval, then ~8 min an arm on 2 cores
    python scripts/lmsi_search.py --screen_grid two_digit_add,chain_sum   # the screen grid, ~15 min a setting
    python scripts/lmsi_search.py --screens two_digit_add=runs/lmsi_search/probe_add   # record a screen's cells

Arms run as separate `lsi.main` processes and keep complete stages, so a rerun resumes; the JSON is rewritten after
each arm.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any

from lsi import metrics
from lsi.evaluation import load_predictions
from lsi.io_utils import write_json_atomic
from lsi.records import Prediction
from lsi.run_layout import RunLayout

BASE_GIN = "gin_configs/runs/quickstart.gin"
TASK = "arithmetic"
# Difficulty settings of the arithmetic task (reasoning-gym config overrides); the quickstart's pool and eval sizes.
SETTINGS: dict[str, dict[str, Any]] = {
    "two_digit_add_sub": {},  # the task's default: a + b or a - b, operands of 1-2 digits
    "two_digit_add": {"operators": ("+",)},
    "three_one_digit_terms": {"min_terms": 3, "max_terms": 3, "max_digits": 1},
}
# The recipe every arm starts from (the quickstart's before it chose one), pinned so that a later change to the
# quickstart does not move the arms; each arm's bindings come after and override it.
RECIPE = ("lsi.FormatStageConfig.formats = 'all'", "lsi.OptimizerConfig.learning_rate = 1e-4",
          "lsi.OptimizerConfig.name = 'adamw'", "lsi.TrainConfig.steps = 12", "lsi.OptimizerConfig.total_steps = 12",
          "lsi.VoteStageConfig.min_vote_share = 0.0")
DEV_EVAL = ("lsi.EvalConfig.split = 'dev'", "lsi.EvalConfig.modes = ('cot_greedy', 'zero_shot_cot')")
STEPS_12 = ("lsi.TrainConfig.steps = 12", "lsi.OptimizerConfig.total_steps = 12")

# The best voted arm (zero_shot_share70_adafactor, today's quickstart): the base of the pool-size and rounds arms.
ADAFACTOR_RECIPE = ("lsi.FormatStageConfig.formats = 'zero_shot'", "lsi.VoteStageConfig.min_vote_share = 0.7",
                    "lsi.OptimizerConfig.name = 'adafactor'", "lsi.OptimizerConfig.learning_rate = 3e-5")
# Arms that sample their own pool (its size) or train more than one round; the others share the pool's samples.
ARM_POOL_SIZE = {"pool320_adafactor": 320}
ARM_ROUNDS = {"two_rounds_adafactor": 2}

# Each arm: (what it tests, gin bindings on top of the quickstart's). The quickstart itself is "paper".
ARMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "paper": ("the paper's four formats, 12 AdamW steps at 1e-4 (today's quickstart)", ()),
    "no_op": ("control: one step at learning rate 0 (must equal the base model)",
              ("lsi.TrainConfig.steps = 1", "lsi.OptimizerConfig.total_steps = 1",
               "lsi.OptimizerConfig.learning_rate = 0.0")),
    "cot_only": ("few-shot and zero-shot CoT formats only", ("lsi.FormatStageConfig.formats = 'cot_only'",)),
    "zero_shot": ("zero-shot CoT and zero-shot direct formats only", ("lsi.FormatStageConfig.formats = 'zero_shot'",)),
    "zero_shot_cot": ("zero-shot CoT format only", ("lsi.FormatStageConfig.formats = 'zero_shot_cot_only'",)),
    "paper_share50": ("four formats, questions with vote share >= 0.5", ("lsi.VoteStageConfig.min_vote_share = 0.5",)),
    "zero_shot_share50": ("zero-shot formats, vote share >= 0.5",
                          ("lsi.FormatStageConfig.formats = 'zero_shot'", "lsi.VoteStageConfig.min_vote_share = 0.5")),
    "zero_shot_share70": ("zero-shot formats, vote share >= 0.7",
                          ("lsi.FormatStageConfig.formats = 'zero_shot'", "lsi.VoteStageConfig.min_vote_share = 0.7")),
    "zero_shot_share70_lr3e_5": ("zero-shot formats, vote share >= 0.7, AdamW at 3e-5",
                                 ("lsi.FormatStageConfig.formats = 'zero_shot'",
                                  "lsi.VoteStageConfig.min_vote_share = 0.7",
                                  "lsi.OptimizerConfig.learning_rate = 3e-5")),
    "zero_shot_weighted": ("zero-shot formats, each path's loss weighted by its question's vote share",
                           ("lsi.FormatStageConfig.formats = 'zero_shot'",
                            "lsi.FormatStageConfig.example_weight = 'vote_share'")),
    "zero_shot_weighted_lr3e_5": ("zero-shot formats, vote-share-weighted loss, AdamW at 3e-5",
                                  ("lsi.FormatStageConfig.formats = 'zero_shot'",
                                   "lsi.FormatStageConfig.example_weight = 'vote_share'",
                                   "lsi.OptimizerConfig.learning_rate = 3e-5")),
    "zero_shot_24steps": ("zero-shot formats, 24 steps",
                          ("lsi.FormatStageConfig.formats = 'zero_shot'", "lsi.TrainConfig.steps = 24",
                           "lsi.OptimizerConfig.total_steps = 24")),
    "zero_shot_adafactor": ("zero-shot formats, Adafactor at 1e-3",
                            ("lsi.FormatStageConfig.formats = 'zero_shot'", "lsi.OptimizerConfig.name = 'adafactor'",
                             "lsi.OptimizerConfig.learning_rate = 1e-3")),
    "zero_shot_share70_adafactor": ("zero-shot formats, vote share >= 0.7, Adafactor at 3e-5 (the recipe's optimizer "
                                    "swapped)", ("lsi.FormatStageConfig.formats = 'zero_shot'",
                                                 "lsi.VoteStageConfig.min_vote_share = 0.7",
                                                 "lsi.OptimizerConfig.name = 'adafactor'",
                                                 "lsi.OptimizerConfig.learning_rate = 3e-5")),
    "zero_shot_share70_lora": ("zero-shot formats, vote share >= 0.7, LoRA rank 8 on every projection, AdamW at 3e-4",
                               ("lsi.FormatStageConfig.formats = 'zero_shot'", "lsi.VoteStageConfig.min_vote_share = 0.7",
                                "lsi.TrainConfig.lora = @lsi.LoraConfig()",
                                "lsi.LoraConfig.targets = ('query', 'key', 'value', 'out', 'gate', 'up', 'down')",
                                "lsi.OptimizerConfig.learning_rate = 3e-4")),
    "pool320_adafactor": ("the Adafactor arm on a pool of 320 questions (2x), 24 steps (the same ~1.3 epochs)",
                          (*ADAFACTOR_RECIPE, "lsi.TrainConfig.steps = 24", "lsi.OptimizerConfig.total_steps = 24")),
    "two_rounds_adafactor": ("the Adafactor arm, then a second round: round 1's model samples the pool again, "
                             "votes, and is fine-tuned once more", ADAFACTOR_RECIPE),
    "zero_shot_lr3e_5": ("zero-shot formats, AdamW at 3e-5",
                         ("lsi.FormatStageConfig.formats = 'zero_shot'", "lsi.OptimizerConfig.learning_rate = 3e-5")),
    "zero_shot_lr3e_4": ("zero-shot formats, AdamW at 3e-4",
                         ("lsi.FormatStageConfig.formats = 'zero_shot'", "lsi.OptimizerConfig.learning_rate = 3e-4")),
    "oracle": ("control: paths matching the hidden gold, four formats", ("lsi.VoteStageConfig.label_source = 'oracle'",)),
    "anti_oracle": ("control: wrong paths only, as many as the vote kept, four formats",
                    ("lsi.VoteStageConfig.label_source = 'anti_oracle'",)),
    "oracle_zero_shot": ("control: gold-matching paths, zero-shot formats",
                         ("lsi.VoteStageConfig.label_source = 'oracle'", "lsi.FormatStageConfig.formats = 'zero_shot'")),
    "anti_oracle_zero_shot": ("control: wrong paths only, as many as the vote kept, zero-shot formats",
                              ("lsi.VoteStageConfig.label_source = 'anti_oracle'",
                               "lsi.FormatStageConfig.formats = 'zero_shot'")),
}
# The screen's grid (issue 16, section 2): each setting is a task and its reasoning-gym config, screened on 100 dev
# questions for both prompt styles with m = 16 sampled once (smaller m by subsampling). The chosen setting (a + b)
# gets T in {0.3, 0.7, 1.0}; the others T = 0.7, the paper's sampling temperature (2 cores: a cell is 3-8 minutes).
# gsm_symbolic's rationales are several sentences (128 new tokens) after a ~1,000-token 8-shot prompt, ~10x the
# cost of an arithmetic cell: 30 questions.
ONE_TEMPERATURE = ("lsi.ScreenConfig.temperatures = (0.7,)",)
SCREEN_SETTINGS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "two_digit_add": ("arithmetic", {"operators": ("+",)}, ()),
    "two_digit_add_sub": ("arithmetic", {}, ONE_TEMPERATURE),
    "three_one_digit_terms": ("arithmetic", {"min_terms": 3, "max_terms": 3, "max_digits": 1}, ONE_TEMPERATURE),
    "chain_sum": ("chain_sum", {}, ONE_TEMPERATURE),
    "leg_counting": ("leg_counting", {}, ONE_TEMPERATURE),
    "gsm_symbolic": ("gsm_symbolic", {}, ("lsi.ScreenConfig.max_new_tokens = 128", "lsi.ScreenConfig.dev_size = 30",
                                          *ONE_TEMPERATURE)),
}
SCREEN_LABELS = {"two_digit_add": "a + b, 1-2 digits", "two_digit_add_sub": "a +/- b, 1-2 digits (task default)",
                 "three_one_digit_terms": "a + b + c, 1 digit", "chain_sum": "chain_sum, 3-4 terms",
                 "leg_counting": "leg_counting", "gsm_symbolic": "gsm_symbolic"}
SCREEN_GRID = ("lsi.ScreenConfig.dev_size = 100", "lsi.ScreenConfig.num_samples = 16",
               "lsi.ScreenConfig.batch_size = 32")
METRICS = {"few_shot_cot_greedy": "cot_greedy", "zero_shot_cot_greedy": "zero_shot_cot"}


def task_kwargs(setting: str, pool_size: int = 160) -> dict[str, Any]:
    return {"pool_size": pool_size, "eval_size": 400, "config": SETTINGS[setting]}


def _lsi_main(run_dir: pathlib.Path, kwargs: dict[str, Any], bindings: tuple[str, ...], stages: list[str],
              extra: tuple[str, ...] = ()) -> None:
    """Runs `lsi.main` on the quickstart's gin file with these task kwargs and bindings, printing the command."""
    command = [sys.executable, "-m", "lsi.main", f"--gin_file={BASE_GIN}",
               f"--gin_param=lsi.Experiment.run_dir = '{run_dir}'",
               f"--gin_param=lsi.Experiment.task_kwargs = {kwargs!r}",
               *(f"--gin_param={b}" for b in bindings), *(f"--stage={s}" for s in stages), *extra]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def run_lsi(run_dir: pathlib.Path, stages: list[str], bindings: tuple[str, ...], extra: tuple[str, ...] = (),
            setting: str = "two_digit_add_sub", pool_size: int = 160) -> None:
    _lsi_main(run_dir, task_kwargs(setting, pool_size), (*RECIPE, *bindings), stages, extra)


def samples_dir(run_dir: pathlib.Path) -> pathlib.Path:
    return RunLayout(run_dir).stage_dir(1, TASK, "samples")


def dev_correct(tag_dir: pathlib.Path) -> dict[str, list[bool]]:
    """eval/<tag>/: each reported metric's per-question correctness on the dev split."""
    return {name: [r.correct for r in load_predictions(tag_dir / TASK / mode / Prediction.FILE)]
            for name, mode in METRICS.items()}


def compare(base: dict[str, list[bool]], arm: dict[str, list[bool]]) -> dict[str, Any]:
    rows = {}
    for name in METRICS:
        d = metrics.paired_difference(base[name], arm[name])
        rows[name] = {"before": d.before.as_dict(), "after": d.after.as_dict(), "difference": d.difference,
                      "ci_low": d.ci_low, "ci_high": d.ci_high, "gained": d.gained, "lost": d.lost,
                      "mcnemar_p": d.p_value}
    return rows


def vote_summary(run_dir: pathlib.Path, setting: str, pool_size: int = 160, round_index: int = 1) -> dict[str, Any]:
    """A round's vote counts and how many kept labels and paths are right (scored against the pool's gold)."""
    from lsi.screen import gold_check  # noqa: PLC0415
    from lsi.self_improve.voting import read_pseudo_labels  # noqa: PLC0415
    from lsi.tasks import get_task  # noqa: PLC0415

    layout = RunLayout(run_dir)
    counts = json.loads((layout.stage_dir(round_index, TASK, "votes") / "manifest.json").read_text())["counts"]
    check = gold_check(read_pseudo_labels(layout.pseudo_labels(round_index, TASK)),
                       get_task(TASK, **task_kwargs(setting, pool_size)).load_pool(), "number")
    precision = check["label_precision"]
    return {**counts, "label_precision": precision["value"] if precision else None,
            "kept_paths_right": check["kept_paths_right"]}


def run_screen(work_dir: pathlib.Path, setting: str) -> pathlib.Path:
    """The screen stage for one SCREEN_SETTINGS entry, in its own run_dir (complete cells are kept on a rerun)."""
    task, config, bindings = SCREEN_SETTINGS[setting]
    run_dir = work_dir / "screen" / setting
    _lsi_main(run_dir, {"pool_size": 160, "eval_size": 400, "config": config},
              (f"lsi.Experiment.task = '{task}'", *SCREEN_GRID, *bindings), ["screen"])
    return run_dir


def record_screen(results: dict[str, Any], setting: str, run_dir: pathlib.Path) -> None:
    results.setdefault("screen", {})[setting] = {
        "run_dir": str(run_dir), **json.loads((RunLayout(run_dir).screen_dir / "results.json").read_text())}


def _screen_row(label: str, cell: dict[str, Any]) -> str:
    """A screen table row (docs/lmsi_search.md): accuracies, SC - greedy with its paired interval and p, kept-path precision, share >= 0.7."""
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    d = cell["sc_minus_greedy"]
    by_threshold = {round(t["threshold"], 2): t for t in cell["pseudo_labels"]}
    kept = by_threshold[0.0]["kept_paths_right"]
    high = by_threshold.get(0.7)
    at_high = f"{100 * high['precision']['value']:.0f}% of {high['questions']}" if high and high["questions"] else ""
    return (f"| {label} | {cell['style']} | {cell['temperature']:g} | {cell['n']} | {pct(cell['greedy']['value'])} | "
            f"{pct(cell['one_sample']['value'])} | {pct(cell['self_consistency']['value'])} | "
            f"{100 * d['difference']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}], "
            f"p = {d['p_value']:.2g} | {'' if kept is None else f'{100 * kept:.0f}%'} | {at_high} |")


def screen_table(results: dict[str, Any]) -> str:
    """The screen grid as docs/lmsi_search.md's markdown table, settings in SCREEN_SETTINGS order."""
    rows = ["| task setting | style | T | n | greedy CoT | one path | self-consistency | SC - greedy [95% CI], "
            "McNemar p | kept right | at share >= 0.7 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for setting in [s for s in SCREEN_SETTINGS if s in results.get("screen", {})]:
        cells = sorted(results["screen"][setting]["cells"], key=lambda c: (c["style"] != "plain", c["temperature"]))
        rows += [_screen_row(SCREEN_LABELS[setting], cell) for cell in cells]
    return "\n".join(rows)


def _anti_oracle_cap(work: pathlib.Path) -> int:
    """As many paths as the method's vote kept (any arm with the default vote)."""
    manifests = [RunLayout(work / "arms" / arm).stage_dir(1, TASK, "votes") / "manifest.json"
                 for arm in ("paper", "zero_shot")]
    return json.loads(next(m for m in manifests if m.exists()).read_text())["counts"]["kept_paths"]


def run_arm(work: pathlib.Path, name: str, setting: str) -> dict[str, Any]:
    """Trains one arm from the shared pool's samples (or its own pool) for its rounds, then evaluates the last
    round's model on the dev split."""
    description, bindings = ARMS[name]
    run_dir, pool_size, rounds = work / "arms" / name, ARM_POOL_SIZE.get(name, 160), ARM_ROUNDS.get(name, 1)
    if name in ARM_POOL_SIZE:
        run_lsi(run_dir, ["sample"], bindings, setting=setting, pool_size=pool_size)
    elif not samples_dir(run_dir).exists():
        shutil.copytree(samples_dir(work / "pool"), samples_dir(run_dir))
    if name.startswith("anti_oracle"):
        bindings = (*bindings, f"lsi.VoteStageConfig.max_total_paths = {_anti_oracle_cap(work)}")
    start = time.perf_counter()
    for r in range(1, rounds + 1):
        run_lsi(run_dir, ["sample", "vote", "format", "train"] if r > 1 else ["vote", "format", "train"], bindings,
                (f"--round={r}",), setting, pool_size)
    run_lsi(run_dir, ["eval"], (*bindings, *DEV_EVAL), ("--eval_model=trained", f"--round={rounds}",
                                                         "--eval_tag=dev"), setting, pool_size)
    layout = RunLayout(run_dir)
    train = json.loads((layout.train_dir(rounds) / "manifest.json").read_text())
    return {"description": description, "gin": list(bindings), "pool_size": pool_size, "rounds": rounds,
            "vote": vote_summary(run_dir, setting, pool_size),
            **({"later_rounds_vote": [vote_summary(run_dir, setting, pool_size, r) for r in range(2, rounds + 1)]}
               if rounds > 1 else {}),
            "train": {"steps": train["counts"]["steps"], "final_metrics": train.get("final_metrics")},
            "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", default="two_digit_add_sub", choices=sorted(SETTINGS))
    parser.add_argument("--arms", default="paper,zero_shot,no_op,oracle,anti_oracle")
    parser.add_argument("--work_dir", default="runs/lmsi_search")
    parser.add_argument("--output", default="benchmarks/results/lmsi_search.json")
    parser.add_argument("--screen_grid", default="", metavar="SETTING,...",
                        help=f"run the screen stage for these SCREEN_SETTINGS ({', '.join(SCREEN_SETTINGS)}), record "
                             "each under screen/SETTING, then exit")
    parser.add_argument("--screens", nargs="*", default=[], metavar="SETTING=RUN_DIR",
                        help="copy a screen stage's results (RUN_DIR/screen/results.json) in under screen/SETTING, "
                             "then exit")
    parser.add_argument("--reuse_base", action="store_true",
                        help="take the pool's samples and the base model's dev predictions already in work_dir as they "
                             "are (an earlier lsi whose stage records differ only in form: a rerun would refuse them)")
    parser.add_argument("--screen_table", action="store_true", help="print the recorded screen as a markdown table")
    args = parser.parse_args()
    if args.screen_table:
        print(screen_table(json.loads(pathlib.Path(args.output).read_text())))
        return
    work, output = pathlib.Path(args.work_dir) / args.setting, pathlib.Path(args.output)
    results = json.loads(output.read_text()) if output.exists() else {"split": "dev", "task": TASK,
                                                                       "base_gin": BASE_GIN, "settings": {}}
    if args.screens or args.screen_grid:
        for item in args.screens:
            setting, run_dir = item.split("=", 1)
            record_screen(results, setting, pathlib.Path(run_dir))
        write_json_atomic(output, results)
        for setting in [s for s in args.screen_grid.split(",") if s]:
            run_dir = run_screen(pathlib.Path(args.work_dir), setting)
            results = json.loads(output.read_text())  # read again: arms may have been recorded meanwhile
            record_screen(results, setting, run_dir)
            write_json_atomic(output, results)
        return
    entry = results["settings"].setdefault(args.setting, {"task_kwargs": task_kwargs(args.setting), "arms": {}})
    if not (args.reuse_base and samples_dir(work / "pool").exists()):
        run_lsi(work / "pool", ["sample"], (), setting=args.setting)
    if not (args.reuse_base and (work / "base" / "eval" / "dev").exists()):
        run_lsi(work / "base", ["eval"], DEV_EVAL, ("--eval_model=base", "--eval_tag=dev"), args.setting)
    base = dev_correct(RunLayout(work / "base").eval_root / "dev")
    entry["base"] = {name: metrics.accuracy(values).as_dict() for name, values in base.items()}
    for name in [a for a in args.arms.split(",") if a]:
        arm = run_arm(work, name, args.setting)
        arm["dev"] = compare(base, dev_correct(RunLayout(work / "arms" / name).eval_root / "dev"))
        results = json.loads(output.read_text()) if output.exists() else results  # others may have written
        entry = results["settings"].setdefault(args.setting, entry)
        entry["arms"][name] = arm
        write_json_atomic(output, results)
        print(json.dumps({name: {k: round(v["difference"], 4) for k, v in arm["dev"].items()}}), flush=True)
    write_json_atomic(output, results)


if __name__ == "__main__":
    main()
