"""W&B tracking, offline: real tiny fine-tunes through the Trainer with the tracking callback, read
back from the `.wandb` files with wandb_reader (no server, no network).

Covers: what a run records (group, job type, tags, config, curves on the global-step axis, the
early-stopping summary agreeing with result.json), a crashed-and-resumed run continuing the same W&B
run without duplicated steps, API-key hygiene, `mode: disabled`, and a broken wandb never failing a job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("wandb")
pytest.importorskip("transformers")

import PIL.Image
import wandb
from transformers import TrainerCallback
from wandb_reader import find_offline_runs, iter_records, read_offline_run

from storytune import tracking
from storytune.config import load_run_config
from storytune.paths import run_dir_for
from storytune.tracking import Tracker, finetune_summary, resolve_mode, run_id_for, trainer_callback

VALIDATION_CURVE = "eval/validation_loss"  # the Trainer's `eval_validation_loss`: the stopping criterion

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("STORYTUNE_TEST_DATA", REPO.parent / "shared" / "data"))
FAKE_KEY = "local-" + "abcdef1234567890" * 3  # valid format (prefix + 48 chars) so wandb accepts it
GROUP = "testgrid"
MAX_STEPS, EVAL_STEPS, BATCH, BLOCK = 30, 10, 4, 64
TOKENS_PER_STEP = BATCH * BLOCK  # one process, no accumulation


# --------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Offline W&B, no real key, wandb's own state (cache, staging, settings) inside the test's tmp.

    wandb reads its environment once per process (its settings singleton, also made by the
    credentials lookup): each test ends with `wandb.teardown()`, so the next one's environment counts.
    """
    _offline_env(monkeypatch, tmp_path / "wandb-home")
    yield
    wandb.teardown()


def _offline_env(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(home / "no-netrc"))
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (DATA / "tinystories-train.txt").exists():
        pytest.skip(f"TinyStories files not found in {DATA} (set STORYTUNE_TEST_DATA)")
    return tmp_path_factory.mktemp("data-cache")


def make_config(out: Path, cache: Path, *extra: str):
    return load_run_config(None, [
        "model.name=tiny", "model.tiny.n_layer=1", "model.tiny.n_embd=32", "model.tiny.n_head=2",
        f"data.files=[{DATA}]", "data.max_stories=300", "data.validation_stories=30",
        "data.test_stories=20", f"data.cache_dir={cache}", f"output.dir={out}",
        f"train.max_steps={MAX_STEPS}", f"train.eval_steps={EVAL_STEPS}", f"train.batch_size={BATCH}",
        f"data.block_size={BLOCK}", "early_stopping.patience=2", "wandb.mode=offline",
        f"wandb.group={GROUP}", "wandb.tags=[cfgtag]",
        "train.max_eval_blocks=16",  # cheap evaluations (the validation split has ~90 blocks)
        *extra,
    ])


def run_job(config, extra_callbacks=(), lead_summary: bool = True):
    """What `storytune.cluster.worker.run_finetune` does: tracker around finetune(), result summary after it."""
    from storytune.train.finetune import finetune, last_checkpoint

    run_dir = run_dir_for(config).create()
    tags = [config.early_stopping.variant, f"seed{config.train.seed}"]
    restart = last_checkpoint(run_dir.checkpoints) is None
    with Tracker.start(config, run_dir.path, "finetune", name=run_dir.path.name, tags=tags,
                       restart=restart) as tracker:
        callbacks = [trainer_callback(tracker), *extra_callbacks]
        result = finetune(config, run_dir, extra_callbacks=callbacks)[0].to_dict()
        if lead_summary:
            tracker.summary(finetune_summary(result))
    return run_dir, tracker, result


def assert_summary_matches(summary: dict, result: dict) -> None:
    """The W&B summary holds result.json's early-stopping fields under result.json's names."""
    picked = finetune_summary(result)
    assert {"stop_step", "stopped_early", "best_step", "best_eval_loss", "kept_step", "kept_eval_loss",
            "patience_counter_at_stop", "train_tokens", "total_flos"} <= picked.keys()
    for key, value in picked.items():
        assert summary[key] == (value if isinstance(value, bool) else pytest.approx(value, rel=1e-9)), key


def eval_points(run) -> list[tuple[int, float]]:
    return [(int(step), loss) for step, loss in run.metric(VALIDATION_CURVE)]


# --------------------------------------------------------------------------------------------------
# A full run, read back (module-scoped: one fine-tune shared by the assertions below)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    out = tmp_path_factory.mktemp("full")
    with pytest.MonkeyPatch.context() as mp:
        _offline_env(mp, out / "wandb-home")
        mp.setenv("WANDB_API_KEY", FAKE_KEY)  # must never reach any file
        config = make_config(out / "runs", cache_dir, "wandb.log_model=true")
        run_dir, tracker, result = run_job(config)
        # Post-training extras the lead may log, in a second (resumed) W&B run part like an
        # evaluation would: table, image, artifact.
        tags = [config.early_stopping.variant, f"seed{config.train.seed}"]  # a resume re-sends its tags
        with Tracker.start(config, run_dir.path, "finetune", name=run_dir.path.name, tags=tags) as again:
            rows = [[p["step"], p["eval_loss"]] for p in result["eval_history"]]
            again.table("eval/points", ["step", "eval_loss"], rows)
            plot = out / "loss.png"
            PIL.Image.new("RGB", (8, 6), "white").save(plot)
            again.images({"eval/loss_plot": plot})
            again.log_artifact_dir(run_dir.model, name=f"model-{run_dir.path.name}", type="model")
        yield config, run_dir, tracker, again, result, out


def test_run_records_group_job_type_tags_config(full_run):
    config, run_dir, tracker, _, _, _ = full_run
    name = run_dir.path.name
    run = read_offline_run(run_dir.path)
    assert run.id == tracker.id == run_id_for(name, "finetune", GROUP)
    assert run.group == GROUP and run.job_type == "finetune" and run.name == name
    assert set(run.tags) == {"cfgtag", config.early_stopping.variant, f"seed{config.train.seed}"}
    assert run.config["train"]["max_steps"] == MAX_STEPS
    assert run.config["early_stopping"]["patience"] == 2
    assert run.config["run_id"] == name and run.config["wandb_id"] == run.id
    assert run.config["hostname"] and "slurm_job_id" in run.config and "git_commit" in run.config
    assert run.exit_codes == [0, 0]
    records = json.loads((run_dir.path / "wandb.json").read_text())
    assert set(records) == {"finetune"}  # one record per job type, nothing else
    record = records["finetune"]
    assert {k: record[k] for k in ("id", "project", "entity", "group", "mode")} == {
        "id": run.id, "project": "storytune", "entity": None, "group": GROUP, "mode": "offline"}
    assert record["last_step"] == MAX_STEPS + 2  # + the table and the image rows
    assert record["global_step"] == MAX_STEPS
    assert FAKE_KEY not in json.dumps(run.config)


def test_curves_share_step_and_token_axes(full_run):
    _, run_dir, _, _, result, _ = full_run
    run = read_offline_run(run_dir.path)
    points = eval_points(run)
    assert len(points) == MAX_STEPS // EVAL_STEPS
    assert [s for s, _ in points] == [p["step"] for p in result["eval_history"]]
    assert [v for _, v in points] == pytest.approx([p["eval_loss"] for p in result["eval_history"]])
    trained = [row for row in run.history if "train/loss" in row]
    assert [row["_step"] for row in trained] == [10, 20, 30]
    for row in run.history:
        if "train/loss" in row or VALIDATION_CURVE in row:
            assert row["_step"] == row["train/global_step"]
            assert row["train/tokens"] == row["train/global_step"] * TOKENS_PER_STEP
    extras = [row for row in run.history if row["_step"] > MAX_STEPS]  # table + image, 2nd part
    assert [row["_step"] for row in extras] == [MAX_STEPS + 1, MAX_STEPS + 2]
    assert extras[0]["train/global_step"] == MAX_STEPS  # synced, not W&B's 0 of a new part
    assert result["tokens_per_step"] == TOKENS_PER_STEP
    train_points = run.metric("eval/train_loss")  # the fixed train subset, evaluated with validation
    assert [int(s) for s, _ in train_points] == [p["step"] for p in result["eval_history"]]
    assert [v for _, v in train_points] == pytest.approx([p["train_loss"] for p in result["eval_history"]])
    assert run.steps == sorted(set(run.steps)), "no step logged twice"
    defined = {r.metric.glob_name or r.metric.name: r.metric.step_metric
               for r in iter_records(next((run_dir.path / "wandb").glob("offline-run-*/run-*.wandb")))
               if r.WhichOneof("record_type") == "metric"}
    assert defined["train/*"] == defined["eval/*"] == defined["train/tokens"] == "train/global_step"


def test_summary_agrees_with_result(full_run):
    _, run_dir, _, _, result, _ = full_run
    run = read_offline_run(run_dir.path)
    assert_summary_matches(run.summary, result)
    assert run.summary["base_eval_loss"] == pytest.approx(result["base_eval_loss"])
    assert run.summary["tokens_per_s"] == pytest.approx(result["tokens_per_s"])


def test_tables_images_and_artifact(full_run):
    _, run_dir, _, again, result, _ = full_run
    assert again.id == read_offline_run(run_dir.path).id  # same W&B run continued
    run = read_offline_run(run_dir.path)
    columns, rows = run.table("eval/points")
    assert columns == ["step", "eval_loss"]
    assert [r[0] for r in rows] == [p["step"] for p in result["eval_history"]]
    image = run.summary["eval/loss_plot"]
    assert image["_type"] == "image-file" and (image["width"], image["height"]) == (8, 6)
    assert (run.run_dirs[-1] / "files" / image["path"]).is_file()
    part = run.run_dirs[-1] / f"run-{run.id}.wandb"
    kinds = {r.WhichOneof("record_type") for r in iter_records(part)}
    assert "artifact" in kinds


def test_reader_agrees_with_wandb_leet(full_run):
    _, run_dir, _, _, _, _ = full_run
    wandb_cli = Path(sys.executable).with_name("wandb")
    if not wandb_cli.exists():
        pytest.skip("wandb CLI not found next to the interpreter")
    folder = find_offline_runs(run_dir.path)[0]
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(folder)],
                         capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        pytest.skip(f"`wandb leet inspect` unavailable: {out.stderr.strip()[:200]}")
    leet = json.loads(out.stdout)
    from wandb_reader import read_run_folder

    mine = read_run_folder(folder)
    assert leet["run_id"] == mine.id
    assert leet["config"] == json.loads(json.dumps(mine.config))
    assert leet["exit_code"] == mine.exit_code
    for key in ("stop_step", "best_step", "best_eval_loss", "train/global_step", VALIDATION_CURVE):
        assert leet["summary"][key] == pytest.approx(mine.summary[key])


def test_api_key_never_written(full_run):
    _, run_dir, _, _, _, out = full_run
    assert list(run_dir.path.glob("wandb/offline-run-*/run-*.wandb")), "tracker must have been active"
    secret = FAKE_KEY.encode()
    leaked = [p for p in out.rglob("*") if p.is_file() and secret in p.read_bytes()]
    leaked += [p for p in out.rglob("*") if p.is_file() and FAKE_KEY.split("-", 1)[1].encode() in p.read_bytes()]
    assert leaked == []


# --------------------------------------------------------------------------------------------------
# Crash after the step-20 checkpoint, then resume


class CrashAfterSave(TrainerCallback):
    """Dies like a preempted job right after the step-`at` checkpoint is on disk."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.at:
            raise RuntimeError(f"simulated preemption after checkpoint {state.global_step}")


def test_resumed_run_continues_same_wandb_run(tmp_path: Path, cache_dir: Path):
    config = make_config(tmp_path / "runs", cache_dir)
    with pytest.raises(RuntimeError, match="simulated preemption"):
        run_job(config, extra_callbacks=[CrashAfterSave(20)], lead_summary=False)
    run_dir = run_dir_for(config)
    first = json.loads((run_dir.path / "wandb.json").read_text())["finetune"]
    assert first["last_step"] == 20
    assert (run_dir.checkpoints / "checkpoint-20").is_dir()

    _, tracker, result = run_job(config)  # the requeued job
    assert result["resumed_from_step"] == 20
    assert tracker.id == first["id"] == run_id_for(run_dir.path.name, "finetune", GROUP)

    folders = find_offline_runs(run_dir.path)
    assert len(folders) == 2
    assert {f.name.split("-")[3] for f in folders} == {tracker.id}
    run = read_offline_run(run_dir.path)
    assert run.id == tracker.id and run.resumed and run.exit_codes == [1, 0]
    assert run.steps == sorted(set(run.steps)), f"duplicated steps: {run.steps}"
    assert [s for s, _ in eval_points(run)] == [10, 20, 30]
    second_part = read_offline_run(folders[1])
    assert [row["_step"] for row in second_part.history] == [30]
    for row in run.history:  # tokens per step from the Trainer's arguments, as in result.json
        if "train/tokens" in row:
            assert row["train/tokens"] == row["train/global_step"] * result["tokens_per_step"]
    assert_summary_matches(run.summary, result)
    assert "base_eval_loss" in run.summary  # from the first attempt, kept across the resume


# --------------------------------------------------------------------------------------------------
# Off and broken


def test_disabled_writes_nothing(tmp_path: Path, cache_dir: Path):
    config = make_config(tmp_path / "runs", cache_dir, "wandb.mode=disabled", "train.max_steps=10")
    run_dir, tracker, result = run_job(config)
    assert not tracker.active and tracker.id is None
    assert result["stop_step"] == 10
    assert not (run_dir.path / "wandb").exists() and not (run_dir.path / "wandb.json").exists()
    assert not list(tmp_path.rglob("*.wandb"))


def test_broken_wandb_init_does_not_fail_job(tmp_path: Path, cache_dir: Path, monkeypatch, caplog):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("wandb exploded")

    monkeypatch.setattr(wandb, "init", broken_init)
    config = make_config(tmp_path / "runs", cache_dir, "train.max_steps=10")
    with caplog.at_level(logging.WARNING, logger="storytune.tracking"):
        run_dir, tracker, result = run_job(config)
    assert not tracker.active
    assert result["stop_step"] == 10 and (run_dir.model / "config.json").exists()
    warnings = [r for r in caplog.records if "wandb exploded" in r.getMessage()]
    assert len(warnings) == 1


def test_online_failure_falls_back_to_offline(tmp_path: Path, monkeypatch, caplog):
    import wandb

    real_init, modes = wandb.init, []

    def no_network_init(*args, mode=None, **kwargs):
        modes.append(mode)
        if mode == "online":
            raise RuntimeError("context deadline exceeded")  # what a compute node without internet gives
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", no_network_init)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.delenv("WANDB_MODE")
    config = make_config(tmp_path / "runs", tmp_path / "cache", "wandb.mode=auto")
    with (caplog.at_level(logging.WARNING, logger="storytune.tracking"),
          Tracker.start(config, tmp_path / "job", "evaluate", name="cell", tags=[]) as tracker):
        tracker.summary({"score": 1.5})
    assert modes == ["online", "offline"] and tracker.mode == "offline"
    assert read_offline_run(tmp_path / "job").summary["score"] == 1.5
    assert "retrying offline" in caplog.text and FAKE_KEY not in caplog.text


def test_failing_run_methods_are_swallowed(caplog):
    class Exploding:
        summary = property(lambda self: (_ for _ in ()).throw(RuntimeError("no summary")))

        def __getattr__(self, name):
            def fail(*args, **kwargs):
                raise RuntimeError(f"{name} broke")
            return fail

    tracker = Tracker(Exploding(), record={"id": "x", "mode": "offline"})
    with caplog.at_level(logging.WARNING, logger="storytune.tracking"):
        for step in (1, 2, 3):
            assert tracker.log({"a": 1}, step=step) is False
        tracker.summary({"a": 1})
        tracker.table("t", ["a"], [[1]])
        tracker.define_step_axes()
        tracker.finish(1)
    assert len([r for r in caplog.records if "log failed" in r.getMessage()]) == 1


def test_other_ranks_get_a_noop_tracker(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    config = make_config(tmp_path / "runs", tmp_path / "cache")
    tracker = Tracker.start(config, tmp_path / "job", "finetune", name="cell", tags=[])
    assert not tracker.active and not (tmp_path / "job").exists()
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.finish()


def test_missing_wandb_gives_noop(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    config = make_config(tmp_path / "runs", tmp_path / "cache")
    tracker = Tracker.start(config, tmp_path / "job", "evaluate", name="job", tags=[])
    assert not tracker.active
    tracker.log({"a": 1}, step=1)
    tracker.finish()


# --------------------------------------------------------------------------------------------------
# The callback's routing, without training (a recording fake run, the Trainer's own dispatcher)


class RecordingRun:
    def __init__(self) -> None:
        self.rows: list[tuple[int | None, dict]] = []
        self.summary: dict = {}
        self.metrics: dict = {}

    def log(self, data, step=None):
        self.rows.append((step, dict(data)))

    def define_metric(self, name, step_metric=None, **kwargs):
        self.metrics[name] = step_metric

    def finish(self, exit_code=0):
        pass


def test_callback_routing_and_resume_floor(tmp_path: Path):
    from types import SimpleNamespace

    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState

    run = RecordingRun()
    config = make_config(tmp_path / "runs", tmp_path / "cache")  # data.block_size = BLOCK
    tracker = Tracker(run, config=config, record={"id": "x", "mode": "offline", "global_step": 20}, resume_floor=20)
    stopper = EarlyStoppingCallback(early_stopping_patience=3)
    ours = trainer_callback(tracker)
    handler = CallbackHandler([stopper, ours], None, None, None, None)
    args = SimpleNamespace(load_best_model_at_end=True, metric_for_best_model="validation_loss",
                           eval_strategy="steps", greater_is_better=False, max_steps=50,
                           per_device_train_batch_size=2, gradient_accumulation_steps=3, world_size=1)
    per_step = 2 * 3 * 1 * BLOCK
    state, control = TrainerState(global_step=0, max_steps=50), TrainerControl()

    handler.on_log(args, state, control, logs={"kept_loss": 9.0, "kept_runtime": 1.0})  # the base model, step 0
    state.global_step = 20  # resumed from checkpoint-20
    handler.on_train_begin(args, state, control)
    for step, loss in ((20, 5.0), (30, 4.0), (30, 4.0), (40, 4.5)):  # 20: logged before the crash
        state.global_step = step
        handler.on_log(args, state, control, logs={"loss": loss + 1, "learning_rate": 1e-4, "epoch": 0.1})
        # One evaluation, two evaluation sets: the Trainer logs each set's metrics separately.
        handler.on_log(args, state, control, logs={"eval_validation_loss": loss, "eval_validation_runtime": 1.0,
                                                   "epoch": 0.1})
        handler.on_log(args, state, control, logs={"eval_train_loss": loss - 1, "epoch": 0.1})
        handler.on_evaluate(args, state, control, metrics={"eval_validation_loss": loss, "eval_train_loss": loss - 1})
        state.best_metric = min(state.best_metric or loss, loss)
        state.best_global_step = 30
    handler.on_log(args, state, control, logs={"train_runtime": 3.0, "train_loss": 4.2,
                                               "total_flos": 7.0, "epoch": 0.1})
    handler.on_train_end(args, state, control)
    handler.on_log(args, state, control, logs={"kept_loss": 4.0})  # the kept weights: result.json's business

    assert [step for step, row in run.rows if VALIDATION_CURVE in row] == [30, 40]  # each evaluation once
    assert [step for step, row in run.rows if "eval/train_loss" in row] == [30, 40]
    assert [step for step, row in run.rows if "train/loss" in row] == [30, 30, 40]  # W&B merges a step
    assert run.rows[0][1] == {"train/loss": 5.0, "train/learning_rate": 1e-4, "train/epoch": 0.1,
                              "train/global_step": 30, "train/tokens": 30 * per_step}
    assert run.rows[1][1] == {VALIDATION_CURVE: 4.0, "eval/validation_runtime": 1.0, "train/global_step": 30,
                              "train/tokens": 30 * per_step}
    assert run.metrics["eval/*"] == run.metrics["train/*"] == "train/global_step"
    assert run.summary == {"base_eval_loss": 9.0, "train/runtime_s": 3.0, "train/mean_loss": 4.2, "total_flos": 7.0}
    assert stopper.early_stopping_patience_counter == 2  # 30 improved; the repeat and 40 did not
    assert tracker.last_step == 40 and tracker.global_step == 40


# --------------------------------------------------------------------------------------------------
# wandb.sync: osh -- the real wandb-osh trigger hook (its watcher: tests/test_wandb_launch.py)


def osh_commands(command_dir: Path) -> list[str]:
    """The run folders the watcher would sync now: the text of each trigger file wandb-osh reads."""
    return sorted(path.read_text() for path in command_dir.glob("*.command"))


def test_osh_triggers_once_per_evaluation_and_at_the_end(tmp_path: Path):
    """The callback asks for a sync once after each evaluation (both evaluation sets logged), and
    the end of the job asks once more; the trigger file names the run's offline folder."""
    pytest.importorskip("wandb_osh")
    from types import SimpleNamespace

    from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState
    from wandb_osh.hooks import TriggerWandbSyncHook

    command_dir, folder = tmp_path / "osh", tmp_path / "job" / "wandb" / "offline-run-20260101_000000-abc"
    folder.mkdir(parents=True)
    config = make_config(tmp_path / "runs", tmp_path / "cache")
    tracker = Tracker(RecordingRun(), config=config, record={"id": "x", "mode": "offline"},
                      sync_hook=TriggerWandbSyncHook(command_dir), sync_dir=folder)
    handler = CallbackHandler([trainer_callback(tracker)], None, None, None, None)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1, world_size=1)
    state, control = TrainerState(global_step=0, max_steps=20), TrainerControl()

    def step(number: int, evaluate: bool) -> list[str]:
        """One optimiser step; returns the syncs asked for, as the watcher would (it removes the files)."""
        state.global_step = number
        handler.on_step_begin(args, state, control)
        asked = osh_commands(command_dir)
        for path in command_dir.glob("*.command"):
            path.unlink()
        handler.on_log(args, state, control, logs={"loss": 5.0})
        if evaluate:
            for name in ("validation", "train"):  # the Trainer evaluates each set on its own
                handler.on_log(args, state, control, logs={f"eval_{name}_loss": 4.0})
                handler.on_evaluate(args, state, control, metrics={f"eval_{name}_loss": 4.0})
        return asked

    handler.on_evaluate(args, state, control, metrics={"eval_validation_loss": 9.0})  # the base model
    handler.on_train_begin(args, state, control)
    asked = [step(n, evaluate=n % 10 == 0) for n in range(1, 21)]
    assert asked[0] == [str(folder)]  # after the evaluation before training
    assert [n for n, paths in enumerate(asked, 1) if paths] == [1, 11]  # step 10's evaluation: at step 11
    handler.on_train_end(args, state, control)
    assert osh_commands(command_dir) == []  # the last evaluation is synced by the end of the job:
    tracker.finish()
    assert osh_commands(command_dir) == [str(folder)]


def test_osh_trigger_names_the_offline_run_folder_of_a_real_run(tmp_path: Path):
    """A real offline W&B run with `wandb.sync=osh`: the trigger appears when the job finishes and
    names its `offline-run-*` folder, in `wandb.osh_command_dir`."""
    pytest.importorskip("wandb_osh")
    command_dir = tmp_path / "osh"
    config = make_config(tmp_path / "runs", tmp_path / "cache", "wandb.sync=osh",
                         f"wandb.osh_command_dir={command_dir}")
    tracker = Tracker.start(config, tmp_path / "job", "evaluate", name="job-eval")
    assert tracker.active and tracker.mode == "offline"
    tracker.summary({"eval/diversity": 0.5})
    assert osh_commands(command_dir) == []
    tracker.finish()
    [folder] = (tmp_path / "job" / "wandb").glob("offline-run-*")
    assert osh_commands(command_dir) == [str(folder.resolve())]
    assert list(folder.glob("run-*.wandb"))


def test_osh_is_off_by_default_for_online_runs_and_without_the_package(monkeypatch, caplog):
    from storytune.config import WandbConfig

    assert tracking._osh_hook(WandbConfig(), "offline") is None  # default: no sync
    assert tracking._osh_hook(WandbConfig(sync="osh"), "online") is None  # online runs stream already
    monkeypatch.setitem(sys.modules, "wandb_osh.hooks", None)  # as if wandb-osh were not installed
    with caplog.at_level(logging.WARNING, logger="storytune.tracking"):
        assert tracking._osh_hook(WandbConfig(sync="osh"), "offline") is None
    assert "wandb.sync=osh but wandb-osh is not installed" in caplog.text
    assert "pip install 'storytune[osh]'" in caplog.text


def test_finetune_summary_picks_result_fields():
    result = {"stop_step": 30, "stopped_early": False, "best_step": 20, "best_eval_loss": 3.5, "kept_step": 30,
              "kept_eval_loss": 3.6, "base_eval_loss": None, "variant": "none", "eval_history": [{"step": 10}]}
    assert finetune_summary(result) == {"stop_step": 30, "stopped_early": False, "best_step": 20,
                                        "best_eval_loss": 3.5, "kept_step": 30, "kept_eval_loss": 3.6}


# --------------------------------------------------------------------------------------------------
# Units: mode, ids, secrets, import hygiene


def _wandb_cfg(mode: str):
    from storytune.config import WandbConfig

    return WandbConfig(mode=mode)


def test_resolve_mode(monkeypatch, tmp_path: Path, caplog):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode(_wandb_cfg("disabled")) == "disabled"
    assert resolve_mode(_wandb_cfg("offline")) == "offline"
    assert resolve_mode(_wandb_cfg("auto")) == "offline"  # no key anywhere
    with caplog.at_level(logging.WARNING, logger="storytune.tracking"):
        assert resolve_mode(_wandb_cfg("online")) == "offline"
    assert len(caplog.records) == 1 and FAKE_KEY not in caplog.text
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode(_wandb_cfg("auto")) == "online"
    assert resolve_mode(_wandb_cfg("online")) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode(_wandb_cfg("auto")) == "offline"  # the environment's choice wins for auto
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert resolve_mode(_wandb_cfg("auto")) == "online"
    netrc_file.write_text("machine example.com login a password b\n")
    assert resolve_mode(_wandb_cfg("auto")) == "offline"
    netrc_file.write_text("this is not ( a netrc")
    assert resolve_mode(_wandb_cfg("auto")) == "offline"  # never fails
    token = tmp_path / "jwt"
    token.write_text("header.payload.signature")
    monkeypatch.setenv("WANDB_IDENTITY_TOKEN_FILE", str(token))  # federated identity: credentials, no key
    assert resolve_mode(_wandb_cfg("auto")) == "online"
    monkeypatch.setenv("WANDB_API_KEY", "not a key")  # wandb refuses the pair (and the key's format)
    with caplog.at_level(logging.WARNING, logger="storytune.tracking"):
        assert resolve_mode(_wandb_cfg("auto")) == "offline"
    assert "not a key" not in caplog.text


def test_run_id_is_deterministic_and_valid():
    ids = {run_id_for("patience3-seed1-abcd1234", job, group)
           for job in ("finetune", "evaluate", "aggregate") for group in ("g1", "g2", None)}
    assert len(ids) == 9
    one = run_id_for("patience3-seed1-abcd1234", "finetune", "g1")
    assert one == run_id_for("patience3-seed1-abcd1234", "finetune", "g1")
    assert run_id_for("patience3-seed1-abcd1234", "finetune", "g1", attempt=1) != one
    for run_id in ids:
        assert len(run_id) <= 64 and run_id.isalnum() and run_id == run_id.lower()


def test_restart_starts_a_new_wandb_run(tmp_path: Path):
    config = make_config(tmp_path / "runs", tmp_path / "cache")
    job = tmp_path / "job"
    with Tracker.start(config, job, "evaluate", name="cell", tags=[]) as first:
        first.log({"x": 1}, step=5)
    with Tracker.start(config, job, "evaluate", name="cell", tags=[]) as resumed:
        assert resumed.id == first.id and resumed.resume_floor == 5
        assert resumed.log({"x": 2}, step=5) is False and resumed.log({"x": 3}, step=6) is True
    with Tracker.start(config, job, "evaluate", name="cell", tags=[], restart=True) as fresh:
        assert fresh.id != first.id and fresh.resume_floor == -1  # nothing logged in the new run
        assert fresh.log({"x": 4}, step=1) is True
    record = json.loads((job / "wandb.json").read_text())["evaluate"]
    assert record["id"] == fresh.id and record["attempt"] == 1
    assert read_offline_run(job).steps == [1]  # wandb.json picks the current run among several
    other = tmp_path / "other"
    with Tracker.start(config, other, "evaluate", name="cell", tags=[]) as empty:
        pass  # crashed before logging any step
    with Tracker.start(config, other, "evaluate", name="cell", tags=[], restart=True) as again:
        assert again.id == empty.id  # nothing to protect: same run continues


def test_jobs_sharing_a_folder_keep_their_own_runs(tmp_path: Path):
    config = make_config(tmp_path / "runs", tmp_path / "cache")
    job = tmp_path / "cell"
    with Tracker.start(config, job, "finetune", name="cell", tags=[]) as train:
        train.log({"train/loss": 1.0, "train/global_step": 10}, step=10)
    with Tracker.start(config, job, "evaluate", name="cell", tags=[]) as evaluate:
        evaluate.summary({"score": 2.0})
    with Tracker.start(config, job, "finetune", name="cell", tags=[]) as resumed:
        assert resumed.id == train.id and resumed.resume_floor == 10  # not lost to the evaluate job
    records = json.loads((job / "wandb.json").read_text())
    assert set(records) == {"finetune", "evaluate"}
    assert records["finetune"]["id"] == train.id and records["evaluate"]["id"] == evaluate.id != train.id
    assert records["finetune"]["last_step"] == 10 and records["evaluate"]["last_step"] is None
    assert read_offline_run(job, job_type="evaluate").summary["score"] == 2.0
    assert read_offline_run(job, job_type="finetune").steps == [10]
    with pytest.raises(ValueError, match="several W&B runs"):
        read_offline_run(job)  # two job types: the reader must be told which


def test_reader_across_blocks_and_torn_tail(tmp_path: Path):
    config = make_config(tmp_path / "runs", tmp_path / "cache")
    job = tmp_path / "job"
    with Tracker.start(config, job, "aggregate", name="grid", tags=["agg"]) as tracker:
        for step in range(200):  # ~1 KB rows: the log spans several 32 KiB blocks
            tracker.log({"value": step, "text": f"{step:04d}" * 250, "big": "x" * (step * 200)}, step=step)
        tracker.summary({"done": True})
    path = next(job.glob("wandb/offline-run-*/run-*.wandb"))
    assert path.stat().st_size > 4 * 32 * 1024
    run = read_offline_run(job)
    assert run.job_type == "aggregate" and run.tags == ["cfgtag", "agg"] and run.summary["done"] is True
    assert [row["value"] for row in run.history] == list(range(200))
    assert all(row["text"] == f"{row['value']:04d}" * 250 for row in run.history)
    assert all(len(row["big"]) == row["value"] * 200 for row in run.history)

    torn = tmp_path / "torn" / path.parent.name
    shutil.copytree(path.parent, torn)
    data = path.read_bytes()
    (torn / path.name).write_bytes(data[: len(data) * 2 // 3])  # a job killed mid-write
    partial = read_offline_run(torn)
    assert 0 < len(partial.history) < 200 and partial.exit_code is None
    assert [row["value"] for row in partial.history] == list(range(len(partial.history)))


def test_scrub_redacts_secret_env_values_and_the_netrc_key(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789abcdef")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))  # the key is in no environment variable
    data = tracking.scrub({"a": "x tok-0123456789abcdef y", "b": ["tok-0123456789abcdef"], "c": 3,
                           "d": f"key={FAKE_KEY}"})
    assert data == {"a": "x <redacted> y", "b": ["<redacted>"], "c": 3, "d": "key=<redacted>"}
    facts = tracking.runtime_facts()
    assert facts["slurm_job_id"] == "4242"
    assert not any(tracking.SECRET_NAME.search(k) for k in facts)


def test_only_tracking_imports_wandb():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "storytune").rglob("*.py")
                 if p.name != "tracking.py" and _imports_wandb(p)]
    assert offenders == []
    code = ("import sys, storytune.tracking, wandb_reader; "
            "assert 'wandb' not in sys.modules, 'wandb imported at module import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])})


def _imports_wandb(path: Path) -> bool:
    import ast

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "wandb" for a in node.names):
            # wandb_reader may import wandb.proto (the reader needs wandb's record classes).
            return path.name != "wandb_reader.py"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "wandb":
            return path.name != "wandb_reader.py" or not (node.module or "").startswith("wandb.proto")
    return False
