from __future__ import annotations

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
    return expand_grid({
        "name": "g", "output_dir": str(tmp_path),
        "base": {"model": {"name": "tiny"}, "data": {"files": ["/x"]}, "train": {"max_steps": 20, "eval_steps": 10}},
        "axes": {"early_stopping": [{"patience": None}, {"patience": 1}], "train.seed": [1, 2]},
        "resources": {"partition": "gpu", "account": "proj", "time_min": 90, "gpus_per_node": 4, "nodes": 2,
                      "cpus_per_task": 6, "mem_gb": 200, "array_parallelism": 3,
                      "sbatch": {"constraint": "a100"},
                      "setup": ["module load cuda/12.4", "source .venv/bin/activate"]},
    })


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
    if os.environ.get("STORYTUNE_UPDATE_GOLDEN") == "1":  # after a deliberate change; review the diff
        GOLDEN_STAGES.write_text(text)
    assert text == GOLDEN_STAGES.read_text()
    assert [(s.kind, s.jobs, s.dependency) for s in stages] == [
        ("finetune", 4, None), ("evaluate", 4, "aftercorr:FINETUNE_ID"), ("evaluate_base", 1, None),
        ("aggregate", 1, "afterany:EVALUATE_ID:EVALUATE_BASE_ID")]
    assert text.count("#!/bin/bash") == 4  # one sbatch script per distinct stage
    assert "#SBATCH --dependency=aftercorr:FINETUNE_ID" in text and "#SBATCH --array=0-3%3" in text


def test_dry_run_replay_evaluations_wait_for_the_whole_array(tmp_path: Path) -> None:
    g = expand_grid({"name": "r", "output_dir": str(tmp_path), "replay": True,
                     "base": {"model": {"name": "tiny"}, "train": {"max_steps": 20, "eval_steps": 10}},
                     "axes": {"early_stopping": [{"patience": None}, {"patience": 1}]}})
    stages = SlurmExecutor(make_plan(g), g.eval_resources, g.spec.resources).stages()
    assert [(s.kind, s.jobs, s.dependency) for s in stages][:2] == [("finetune", 1, None),
                                                                    ("evaluate", 2, "afterok:FINETUNE_ID")]
