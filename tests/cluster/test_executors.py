from __future__ import annotations

import os
import re
from pathlib import Path

from storytune.cluster.executors import SlurmExecutor, submitit_parameters
from storytune.paths import write_json_atomic
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
