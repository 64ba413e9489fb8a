from __future__ import annotations

import json
import os
import re
from pathlib import Path

from storytune.cluster.executors import SlurmExecutor, slurm_states, submitit_parameters
from storytune.cluster.status import format_status, grid_status
from storytune.cluster.worker import write_manifest
from storytune.paths import GridDir, write_json_atomic
from storytune.study.grid import ResourcesConfig, expand_grid
from storytune.study.plan import make_plan

GOLDEN = Path(__file__).parent / "golden" / "sbatch_finetune_array.sh"


def grid(tmp_path: Path):
    return expand_grid(grid_raw(tmp_path))


def grid_raw(tmp_path: Path) -> dict:
    return {
        "name": "g", "output_dir": str(tmp_path),
        "base": {"model": {"name": "tiny"}, "data": {"files": ["/x"]}, "train": {"max_steps": 20, "eval_steps": 10}},
        "axes": {"early_stopping": [{"patience": None}, {"patience": 1}], "train.seed": [1, 2]},
        "resources": {"partition": "gpu", "account": "proj", "time_min": 90, "gpus_per_node": 4, "nodes": 2,
                      "cpus_per_task": 6, "mem_gb": 200, "array_parallelism": 3,
                      "sbatch": {"constraint": "a100"},
                      "setup": ["module load cuda/12.4", "source .venv/bin/activate"]},
    }


def test_dry_run_sbatch_matches_golden_file(tmp_path: Path) -> None:
    g = grid(tmp_path)
    plan = make_plan(g)
    text = SlurmExecutor(plan, g.eval_resources, g.spec.resources).sbatch_preview()
    text = text.replace(str(tmp_path), "<ROOT>")
    text = re.sub(r"\S*python\S* -u -m submitit", "<PYTHON> -u -m submitit", text)
    if os.environ.get("STORYTUNE_UPDATE_GOLDEN") == "1":  # after a deliberate change; review the diff
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    assert "#SBATCH --array=0-3%3" in text and "#SBATCH --ntasks-per-node=4" in text
    assert "#SBATCH --gpus-per-node=4" in text and "#SBATCH --nodes=2" in text


def test_parameters_map_resources() -> None:
    params = submitit_parameters(ResourcesConfig(partition="p", qos="high", setup=["x"]), "n", "afterany:1:2")
    assert params["slurm_partition"] == "p" and params["slurm_setup"] == ["x"]
    assert params["slurm_additional_parameters"]["dependency"] == "afterany:1:2"
    assert params["slurm_additional_parameters"]["qos"] == "high"
    assert "gpus_per_node" not in params
    assert params["slurm_srun_args"] == ["--kill-on-bad-exit=1"]  # a dead rank ends the job, no hang


class RecordingSlurm(SlurmExecutor):
    """Records what would be submitted instead of calling sbatch: the wiring alone is under test
    here (the real cluster test in test_launch_slurm.py submits for real)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[list[str], str | None]] = []
        self.next_id = 100

    def _submit_array(self, jobs, resources, name, dependency=None):
        if not jobs:
            return {}
        self.calls.append(([j.name for j in jobs], dependency))
        base, self.next_id = self.next_id, self.next_id + 1
        if len(jobs) == 1:
            return {jobs[0].name: str(base)}
        return {j.name: f"{base}_{i}" for i, j in enumerate(jobs)}


def test_dependency_wiring(tmp_path: Path) -> None:
    g = grid(tmp_path)
    plan = make_plan(g)
    executor = RecordingSlurm(plan, g.eval_resources, g.spec.resources, state_of=lambda ids: {})
    outcome = executor.submit()
    (finetunes, none_dep), (evals, eval_dep), (base, base_dep), (agg, agg_dep) = executor.calls
    assert len(finetunes) == 4 and none_dep is None
    assert eval_dep == "aftercorr:100" and len(evals) == 4
    assert base == ["evaluate/base"] and base_dep is None
    assert agg == ["aggregate"]
    assert agg_dep == "afterany:101_0:101_1:101_2:101_3:102"
    assert all(o.status == "submitted" for o in outcome)


def test_resubmission_skips_done_and_queued(tmp_path: Path) -> None:
    g = grid(tmp_path)
    plan = make_plan(g)
    first = RecordingSlurm(plan, g.eval_resources, g.spec.resources, state_of=lambda ids: {})
    first.submit()
    # Cell 0 finished; everything else is still queued according to Slurm.
    write_json_atomic(plan.finetunes[0].output, {"done": True})
    write_json_atomic(plan.evaluations[0].output, {"done": True})
    queued = RecordingSlurm(make_plan(g), g.eval_resources, g.spec.resources,
                            state_of=lambda ids: {i: "PENDING" for i in ids})
    outcome = {o.name: o.status for o in queued.submit()}
    assert queued.calls == [(["aggregate"], "afterany:101_1:101_2:101_3:102")]
    assert outcome[plan.finetunes[0].name] == "skipped (done)"
    assert outcome[plan.finetunes[1].name] == "skipped (queued or running)"
    # Now the queued jobs failed: only they are submitted again.
    failed = RecordingSlurm(make_plan(g), g.eval_resources, g.spec.resources,
                            state_of=lambda ids: {i: "FAILED" for i in ids})
    failed.submit()
    names = [names for names, _ in failed.calls]
    assert names[0] == [j.name for j in plan.finetunes[1:]]
    assert failed.calls[1][1] == "aftercorr:100"


# What `sacct -o JobID,State,NodeList --parsable2` prints for: an array 100 of four tasks, two started
# (one still running, with its batch step) and two not yet (`_[2-3%2]`: one pending line, throttled),
# and a job 101 cancelled by user 0.
SACCT_OUTPUT = """JobID|State|NodeList
100_[2-3%2]|PENDING|None assigned
100_0|RUNNING|node1
100_0.batch|RUNNING|node1
100_1|COMPLETED|node1
101|CANCELLED by 0|node1
"""


def fake_sacct(tmp_path: Path, monkeypatch) -> Path:
    """A `sacct` on PATH that prints SACCT_OUTPUT and records its arguments. A stand-in: the real
    one needs a Slurm cluster with accounting (test_launch_slurm.py checks status there), and a
    pending throttled array cannot be produced on demand."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sacct-calls"
    script = bin_dir / "sacct"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\ncat <<'EOF'\n{SACCT_OUTPUT}EOF\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_slurm_states_expand_arrays_in_one_sacct_call(tmp_path: Path, monkeypatch) -> None:
    calls = fake_sacct(tmp_path, monkeypatch)
    states = slurm_states(["100_0", "100_1", "100_2", "100_3", "101", "102"])
    assert states == {"100_0": "RUNNING", "100_1": "COMPLETED", "100_2": "PENDING", "100_3": "PENDING",
                      "101": "CANCELLED"}  # 102: unknown to sacct, left out
    [call] = calls.read_text().splitlines()
    assert sorted(call.split()[-6:][1::2]) == ["100", "101", "102"]  # `-j <base id>` each, once
    assert slurm_states([]) == {}


def test_no_sacct_means_no_states(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there: off Slurm
    assert slurm_states(["100_0"]) == {}


def test_status_reads_outputs_submissions_and_sacct(tmp_path: Path, monkeypatch) -> None:
    fake_sacct(tmp_path, monkeypatch)
    plan = make_plan(grid(tmp_path / "out"))
    write_manifest(plan)
    finetunes, evals = plan.finetunes, plan.evaluations
    ids = {finetunes[i].name: f"100_{i}" for i in range(4)} | {evals[0].name: "101", evals[1].name: "102"}
    grid_dir = GridDir(plan.root)
    write_json_atomic(grid_dir.submissions, {name: {"job_id": job_id} for name, job_id in ids.items()})
    write_json_atomic(finetunes[1].output, {"done": True})
    logs = grid_dir.job_logs("101")
    logs.mkdir(parents=True)
    (logs / "101_0_log.err").write_text("loading\n\nslurmstepd: *** JOB 101 CANCELLED ***\n")

    statuses = grid_status(plan.root)
    states = {s.name: s.state for s in statuses}
    assert [states[job.name] for job in finetunes] == ["running", "done", "queued", "queued"]
    assert [states[job.name] for job in evals] == ["failed (cancelled)", "unknown", "not submitted", "not submitted"]
    assert states["aggregate"] == "not submitted"
    text = format_status(statuses)
    assert f"{evals[0].name.ljust(max(len(n) for n in states))}  {'failed (cancelled)':<28} 101" in text
    assert "    | loading\n    | slurmstepd: *** JOB 101 CANCELLED ***" in text
    assert text.splitlines()[-1] == "1 done, 1 failed, 4 not, 2 queued, 1 running, 1 unknown"


GOLDEN_STAGES = Path(__file__).parent / "golden" / "dry_run_stages.txt"


def test_dry_run_shows_every_stage_with_dependencies_and_scripts(tmp_path: Path) -> None:
    from storytune.cluster.launch import format_dry_run

    g = grid(tmp_path)
    stages = SlurmExecutor(make_plan(g), g.eval_resources, g.spec.resources).stages()
    text = format_dry_run(stages).replace(str(tmp_path), "<ROOT>")
    text = re.sub(r"\S*python\S* -u -m submitit", "<PYTHON> -u -m submitit", text)
    # The base evaluation's key hashes every model/data/generation/eval default: not pinned here.
    text = text.replace(f"key {make_plan(g).base_evaluation.key}", "key <KEY>")
    if os.environ.get("STORYTUNE_UPDATE_GOLDEN") == "1":  # after a deliberate change; review the diff
        GOLDEN_STAGES.write_text(text)
    assert text == GOLDEN_STAGES.read_text()
    assert [(s.kind, s.jobs, s.dependency) for s in stages] == [
        ("finetune", 4, None), ("evaluate", 4, "aftercorr:FINETUNE_ID"), ("evaluate_base", 1, None),
        ("aggregate", 1, "afterany:EVALUATE_ID:EVALUATE_BASE_ID")]
    assert text.count("#!/bin/bash") == 4  # one sbatch script per distinct stage
    assert "#SBATCH --dependency=aftercorr:FINETUNE_ID" in text and "#SBATCH --array=0-3%3" in text


def replay_grid(tmp_path: Path, **extra):
    return expand_grid({"name": "r", "output_dir": str(tmp_path), "replay": True,
                        "base": {"model": {"name": "tiny"}, "train": {"max_steps": 20, "eval_steps": 10}},
                        "axes": {"train.seed": [1, 2], "early_stopping": [{"patience": None}, {"patience": 1}]},
                        **extra})


def test_dry_run_replay_evaluation_i_waits_for_training_i_only(tmp_path: Path) -> None:
    """One evaluation per training, task i after training task i (`aftercorr`): a failed training
    cancels its own cells' evaluation and no other (`afterok` on the whole array would cancel all)."""
    g = replay_grid(tmp_path)
    stages = SlurmExecutor(make_plan(g), g.eval_resources, g.spec.resources).stages()
    assert [(s.kind, s.jobs, s.dependency) for s in stages][:2] == [("finetune", 2, None),
                                                                    ("evaluate", 2, "aftercorr:FINETUNE_ID")]
    assert "4 cells, each distinct kept checkpoint evaluated once" in stages[1].summary()


def test_replay_dependency_wiring(tmp_path: Path) -> None:
    g = replay_grid(tmp_path)
    plan = make_plan(g)
    executor = RecordingSlurm(plan, g.eval_resources, g.spec.resources, state_of=lambda ids: {})
    executor.submit()
    (finetunes, _), (evals, eval_dep), _, (_, agg_dep) = executor.calls
    assert evals == [f"evaluate/{name.split('/')[1]}" for name in finetunes] and eval_dep == "aftercorr:100"
    assert agg_dep == "afterany:101_0:101_1:102"


def test_evaluations_that_do_not_line_up_wait_each_for_its_own_training_task(tmp_path: Path) -> None:
    """Training 0 must run again but its cells' evaluations are all on disk: evaluation 1 alone is
    pending, so the arrays do not line up for `aftercorr`; it waits for training task 1 only."""
    g = replay_grid(tmp_path)
    plan = make_plan(g)
    for path in plan.evaluations[0].outputs:
        write_json_atomic(path, {"done": True})
    executor = RecordingSlurm(make_plan(g), g.eval_resources, g.spec.resources, state_of=lambda ids: {})
    executor.submit()
    (finetunes, _), (evals, eval_dep), *_ = executor.calls
    assert len(finetunes) == 2 and evals == [plan.evaluations[1].name] and eval_dep == "afterok:100_1"
    stage = SlurmExecutor(make_plan(g), g.eval_resources, g.spec.resources).stages()[1]
    assert stage.dependency == "afterok:FINETUNE_ID_TASK" and "each after its own fine-tune task" in stage.note


def test_aggregation_runs_on_its_own_cpu_resources(tmp_path: Path) -> None:
    g = grid(tmp_path)
    executor = SlurmExecutor(make_plan(g), g.eval_resources, g.spec.resources,
                             aggregate_resources=g.aggregate_resources)
    stages = {stage.kind: stage for stage in executor.stages()}
    assert stages["aggregate"].resources.gpus_per_node == 0 and stages["aggregate"].gpu_hours == 0
    script = stages["aggregate"].script
    assert "#SBATCH --gpus" not in script and "#SBATCH --account=proj" in script
    # GPU-hours = jobs x nodes x GPUs per node x time limit (90 min): 4 x 2 x 4 x 1.5.
    assert stages["finetune"].gpu_hours == 48 and stages["evaluate_base"].gpu_hours == 12
    custom = expand_grid({**grid_raw(tmp_path), "aggregate_resources": {"gpus_per_node": 1, "time_min": 30}})
    agg = SlurmExecutor(make_plan(custom), custom.eval_resources, custom.spec.resources,
                        aggregate_resources=custom.aggregate_resources).stages()[-1]
    assert agg.kind == "aggregate" and agg.gpu_hours == 0.5


def test_base_evaluation_under_other_settings_is_submitted_again(tmp_path: Path) -> None:
    """A queued base evaluation of the old settings writes another keyed folder: not counted."""
    g = grid(tmp_path)
    RecordingSlurm(make_plan(g), g.eval_resources, g.spec.resources, state_of=lambda ids: {}).submit()
    record = json.loads(GridDir(make_plan(g).root).submissions.read_text())
    assert record["evaluate/base"]["output"] == str(make_plan(g).base_evaluation.output)
    raw = grid_raw(tmp_path)
    changed = expand_grid({**raw, "base": {**raw["base"], "generation": {"num_prompts": 4}}})
    queued = RecordingSlurm(make_plan(changed), changed.eval_resources, changed.spec.resources,
                            state_of=lambda ids: {i: "PENDING" for i in ids})
    outcome = {o.name: o.status for o in queued.submit()}
    assert outcome["evaluate/base"] == "submitted"


def test_status_shows_the_base_evaluation_key_and_stale_ones(tmp_path: Path) -> None:
    plan = make_plan(grid(tmp_path / "out"))
    write_manifest(plan)
    write_json_atomic(GridDir(plan.root).base_eval("0ld5e771") / "eval.json", {"done": True})
    key = plan.base_evaluation.key

    def base_line() -> str:
        text = format_status(grid_status(plan.root, state_of=lambda ids: {}))
        (line,) = [line for line in text.splitlines() if line.startswith("evaluate/base")]
        return line

    assert "not submitted" in base_line() and f"(key {key}; done under other settings: 0ld5e771)" in base_line()
    write_json_atomic(plan.base_evaluation.output, {"done": True})
    assert " done " in base_line() and f"(key {key}; done under other settings: 0ld5e771)" in base_line()


# --------------------------------------------------------------------------------------------------
# A multi-node cell: 2 nodes x 4 GPUs = 8 training processes

GOLDEN_MULTINODE = Path(__file__).parent / "golden" / "sbatch_multinode_cell.sh"
RENDEZVOUS_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def multinode_grid(tmp_path: Path, **resources):
    """One cell (no axes), so submitit writes a plain job, not an array."""
    return expand_grid({
        "name": "mn", "output_dir": str(tmp_path),
        "base": {"model": {"name": "tiny"}, "data": {"files": ["/x"]}, "train": {"max_steps": 20, "eval_steps": 10}},
        "resources": {"partition": "gpu", "time_min": 120, "cpus_per_task": 8, **resources},
    })


def normalized_preview(tmp_path: Path, g) -> str:
    text = SlurmExecutor(make_plan(g), g.eval_resources, g.spec.resources).sbatch_preview()
    text = text.replace(str(tmp_path), "<ROOT>")
    return re.sub(r"\S*python\S* -u -m submitit", "<PYTHON> -u -m submitit", text)


def test_two_node_four_gpu_cell_sbatch_matches_golden_file(tmp_path: Path) -> None:
    text = normalized_preview(tmp_path, multinode_grid(tmp_path, nodes=2, gpus_per_node=4))
    if os.environ.get("STORYTUNE_UPDATE_GOLDEN") == "1":  # after a deliberate change; review the diff
        GOLDEN_MULTINODE.write_text(text)
    assert text == GOLDEN_MULTINODE.read_text()
    lines = text.splitlines()
    # 2 nodes x 4 tasks = 8 processes; each node's 4 GPUs are shared by its 4 tasks (each picks
    # cuda:LOCAL_RANK), which is what Accelerate/DDP expects of a node.
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=8", "export SUBMITIT_EXECUTOR=slurm"):
        assert line in lines
    assert "--array" not in text and "--gpus-per-task" not in text
    # srun without -n/--ntasks starts one task per allocated task slot: 8, one per GPU; each writes
    # its own log (%t = task rank).
    (srun,) = [line for line in lines if line.startswith("srun ")]
    assert " -n " not in srun and "--ntasks" not in srun and "_%t_log.out" in srun
    assert srun.endswith("<PYTHON> -u -m submitit.core._submit <ROOT>/mn/logs/%j")


def slurm_task_env(monkeypatch, job_id: str, nodelist: str, procid: int, tasks_per_node: int, nodes: int,
                   folder: Path) -> None:
    """The variables srun gives task `procid` of a `nodes` x `tasks_per_node` job (what Slurm would
    set; no multi-node cluster exists here), plus the two that submitit's sbatch script and
    `_submit` add."""
    for key in (*RENDEZVOUS_KEYS, "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        # setenv first so that monkeypatch records the key's original state (usually: absent) and
        # restores it; export_slurm_distributed_env writes os.environ directly, and leftovers
        # (RANK, WORLD_SIZE=8, MASTER_ADDR=gpu07) would make every later subprocess wait for a rendezvous.
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SUBMITIT_FOLDER", str(folder))
    monkeypatch.setenv("SLURM_JOB_ID", job_id)
    monkeypatch.setenv("SLURM_JOB_NODELIST", nodelist)
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", str(nodes))
    monkeypatch.setenv("SLURM_NTASKS", str(nodes * tasks_per_node))
    monkeypatch.setenv("SLURM_NODEID", str(procid // tasks_per_node))
    monkeypatch.setenv("SLURM_PROCID", str(procid))
    monkeypatch.setenv("SLURM_LOCALID", str(procid % tasks_per_node))


def test_every_task_of_a_two_node_job_gets_the_same_rendezvous(tmp_path: Path, monkeypatch) -> None:
    """The sbatch script exports no MASTER_ADDR/PORT: each task derives them itself from Slurm's
    variables (submitit's TorchDistributedEnvironment, called by the worker): the address is the
    first host of SLURM_JOB_NODELIST and the port a function of the job id, so all 8 tasks agree
    without talking to each other."""
    from storytune.cluster.worker import export_slurm_distributed_env

    seen = []
    for procid in range(8):
        slurm_task_env(monkeypatch, "4242", "gpu[07-08]", procid, tasks_per_node=4, nodes=2, folder=tmp_path)
        assert export_slurm_distributed_env()
        seen.append({key: os.environ[key] for key in RENDEZVOUS_KEYS})
    assert {(env["MASTER_ADDR"], env["MASTER_PORT"]) for env in seen} == {("gpu07", seen[0]["MASTER_PORT"])}
    assert 20000 <= int(seen[0]["MASTER_PORT"]) <= 60000  # submitit's range, above the privileged ports
    assert [env["RANK"] for env in seen] == [str(r) for r in range(8)]
    assert [env["LOCAL_RANK"] for env in seen] == [str(r % 4) for r in range(8)]
    assert {(env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) for env in seen} == {("8", "4")}
    # Another job gets another port (seeded by the job id): two jobs sharing a first node do not collide.
    slurm_task_env(monkeypatch, "4243", "gpu[07-08]", 0, tasks_per_node=4, nodes=2, folder=tmp_path)
    export_slurm_distributed_env()
    assert os.environ["MASTER_PORT"] != seen[0]["MASTER_PORT"]


def test_one_task_job_exports_no_rendezvous(tmp_path: Path, monkeypatch) -> None:
    from storytune.cluster.worker import export_slurm_distributed_env

    slurm_task_env(monkeypatch, "4242", "cpu01", 0, tasks_per_node=1, nodes=1, folder=tmp_path)
    assert not export_slurm_distributed_env()
    assert "RANK" not in os.environ and "MASTER_ADDR" not in os.environ


def test_tasks_per_node_asks_for_several_cpu_tasks(tmp_path: Path) -> None:
    assert submitit_parameters(ResourcesConfig(), "n")["tasks_per_node"] == 1
    assert submitit_parameters(ResourcesConfig(gpus_per_node=4), "n")["tasks_per_node"] == 4  # one per GPU
    params = submitit_parameters(ResourcesConfig(tasks_per_node=2), "n")
    assert params["tasks_per_node"] == 2 and "gpus_per_node" not in params
    text = normalized_preview(tmp_path, multinode_grid(tmp_path, tasks_per_node=2))
    assert "#SBATCH --ntasks-per-node=2" in text.splitlines() and "gpus" not in text
    stage = SlurmExecutor(make_plan(g := multinode_grid(tmp_path, tasks_per_node=2)), g.eval_resources,
                          g.spec.resources).stages()[0]
    assert "1 node(s) x 2 task(s), 8 CPUs/task" in stage.summary()


def test_tasks_per_node_must_be_positive() -> None:
    import pytest

    from storytune.config import ConfigError

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="tasks_per_node"):
            ResourcesConfig(tasks_per_node=bad)


def test_max_requeues_is_submitits_timeout_budget(tmp_path: Path) -> None:
    g = grid(tmp_path)
    executor = SlurmExecutor(make_plan(g), g.eval_resources, g.spec.resources)
    assert executor._executor(ResourcesConfig(max_requeues=0), "n")._executor.max_num_timeout == 0
    assert executor._executor(ResourcesConfig(), "n")._executor.max_num_timeout == 3


def test_status_shows_failure_records_without_slurm(tmp_path: Path) -> None:
    """Local and debug runs leave no Slurm state: failure.json alone says a job failed, and why."""
    plan = make_plan(grid(tmp_path / "out"))
    write_manifest(plan)
    failed_eval, base = plan.evaluations[2], plan.base_evaluation
    write_json_atomic(failed_eval.failure, {"reason": "CUDA out of memory"})
    write_json_atomic(base.failure, {"reason": "base model not in the cache"})
    states = {s.name: s for s in grid_status(plan.root, state_of=lambda ids: {})}
    assert (states[failed_eval.name].state, states[failed_eval.name].reason) == ("failed", "CUDA out of memory")
    assert (states["evaluate/base"].state, states["evaluate/base"].reason) == ("failed", "base model not in the cache")
    assert states[plan.evaluations[0].name].state == "not submitted" and states["aggregate"].reason is None
    assert "    reason: CUDA out of memory" in format_status(list(states.values()))


def test_status_shows_a_job_stopped_on_request_and_what_a_rerun_does(tmp_path: Path) -> None:
    """A job ended by Ctrl-C/SIGTERM leaves stopped.json (its own name inside): `status` says stopped, not
    "not submitted"; the cell's evaluation (same folder) is not stopped; starting the job again clears it."""
    from storytune.cluster.worker import clear_stop_record, write_stop_record
    from storytune.paths import stopped_file
    from storytune.stop import StopRequested

    plan = make_plan(grid(tmp_path / "out"))
    write_manifest(plan)
    training = plan.finetunes[0]
    write_stop_record(training, StopRequested(15), "a rerun resumes from checkpoint-10, the last complete checkpoint")
    states = {s.name: s for s in grid_status(plan.root, state_of=lambda ids: {})}
    assert states[training.name].state == "stopped (SIGTERM)"
    assert states[training.name].reason == "a rerun resumes from checkpoint-10, the last complete checkpoint"
    evaluation = next(job for job in plan.evaluations if job.run_id == training.run_id)
    assert states[evaluation.name].state == "not submitted" and states[evaluation.name].reason is None
    assert "    rerun: a rerun resumes from checkpoint-10" in format_status(list(states.values()))
    assert "1 stopped" in format_status(list(states.values()))

    clear_stop_record(evaluation)  # another job's record stays
    assert stopped_file(training.failure).exists()
    clear_stop_record(training)
    assert grid_status(plan.root, state_of=lambda ids: {})[0].state == "not submitted"


def test_dry_run_of_the_shipped_gpu_grid_shows_gpu_hours_per_stage(tmp_path: Path, capsys) -> None:
    """3 trainings and 3 evaluation jobs (one per training, not one per cell) of 1 GPU x 60 min,
    the base evaluation, and an aggregation on CPU."""
    from storytune.cluster.launch import submit_grid
    from storytune.study.grid import load_grid

    grid = load_grid(Path(__file__).parents[2] / "configs" / "grids" / "early_stopping.yaml",
                     [f"output_dir={tmp_path}"])
    assert submit_grid(grid, executor_name="slurm", dry_run=True) == 0
    out = capsys.readouterr().out
    hours = out.split("# GPU-hours requested")[1].split("# sbatch script")[0]
    assert [line.split() for line in hours.strip().splitlines()[1:]] == [
        ["finetune", "3.0"], ["evaluate", "3.0"], ["evaluate_base", "1.0"], ["aggregate", "0.0"], ["total", "7.0"]]
    assert "evaluate         3 jobs (array 0-2%3)" in out and "(15 cells, each distinct kept checkpoint" in out
    assert not (tmp_path / "early_stopping" / "plan.json").exists()


def test_dry_run_says_which_base_evaluation_key_is_done(tmp_path: Path, capsys) -> None:
    """The issue's case: a finished grid resubmitted with other generation settings must not show
    the old base evaluation as done."""
    from storytune.cluster.launch import submit_grid

    g = grid(tmp_path)
    old = make_plan(g).base_evaluation
    write_json_atomic(old.output, {"done": True})
    submit_grid(g, executor_name="slurm", dry_run=True)
    assert f"evaluation: done (key {old.key}: base/eval-{old.key})" in capsys.readouterr().out
    raw = grid_raw(tmp_path)
    changed = expand_grid({**raw, "base": {**raw["base"], "generation": {"num_prompts": 4, "max_new_tokens": 12}}})
    new = make_plan(changed).base_evaluation
    assert new.key != old.key and not new.done
    submit_grid(changed, executor_name="slurm", dry_run=True)
    out = capsys.readouterr().out
    assert (f"evaluation: pending (key {new.key}: base/eval-{new.key}; done under other settings: {old.key}, "
            "not reused)") in out
    assert "evaluate_base    1 job" in out
