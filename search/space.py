"""Search spaces: readable YAML files in ``studies/spaces/`` → Optuna suggestions.

A space file has a ``training`` and a ``model`` section. Each entry is either a
fixed value or a distribution::

    learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    batch_size: {type: categorical, choices: [32, 64]}
    blocks: {type: int, low: 2, high: 4}
    alpha: {type: categorical, choices: [0.25, 0.5], when: {version: v1}}
    warmup_epochs: 2            # fixed, recorded but not searched

``when`` makes a parameter conditional on earlier ones (define-by-run).
``MODEL=all`` makes the family itself a categorical parameter and prefixes
each family's parameters with ``<family>.`` so their ranges never clash.

Every family has two profiles: ``studies/spaces/<family>.yaml`` is sized for a
laptop CPU (the default search must fit its 25-minute budget) and
``studies/spaces/gpu/<family>.yaml`` for an accelerator (larger images, wider
CNNs, larger batches, more epochs). The profile follows what Keras really
trains on (``search.environment.device_description()``), so installing a GPU
backend is enough to get the bigger space; ``SPACE=`` still wins, and
``FIX=`` pins parameters of whichever file is read.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import yaml

from data_pipeline.errors import first_line
from models.registry import FAMILIES
from search.errors import SearchConfigError

ROOT = Path(__file__).resolve().parent.parent
# In a checkout (and an editable install) the spaces are studies/spaces/, the files users read and edit; a
# non-editable install (pip install ., a Docker image) has them as package data, search/spaces/ (pyproject.toml)
CHECKOUT_SPACES_DIR = ROOT / "studies" / "spaces"
SPACES_DIR = CHECKOUT_SPACES_DIR if CHECKOUT_SPACES_DIR.is_dir() else Path(__file__).resolve().parent / "spaces"
PROFILE_DIRS = {"cpu": SPACES_DIR, "gpu": SPACES_DIR / "gpu"}
PROFILE_REASONS = {"cpu": "no accelerator found", "gpu": "accelerator found"}
KINDS = ("float", "int", "categorical")


def profile_for(device: str) -> str:
    """``"gpu"`` when Keras trains on an accelerator (``device_description()`` reads ``gpu: …``), else ``"cpu"``."""
    return "gpu" if device.strip().lower().startswith("gpu:") else "cpu"


def _shown(path: Path) -> str:
    """A space file as the user would type it: relative to the checkout for its own ones, else the full path."""
    path = Path(path)
    if SPACES_DIR != CHECKOUT_SPACES_DIR:
        return str(path)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class SearchSpace:
    """The resolved space of one study: per family, the training and model entries.

    ``profile`` and ``source`` say where the entries came from (for the first
    lines of a search and the resume check); they are not part of the
    fingerprint, so two profiles that held the same entries would be one space.
    A space read back from a study by a joining worker may not know them.
    """

    model: str  # a family name or "all"
    families: dict[str, dict]  # family -> {"training": {...}, "model": {...}}
    profile: str | None = field(default=None, compare=False)  # "cpu" or "gpu": the device's profile
    source: str | None = field(default=None, compare=False)  # the file(s) read, e.g. studies/spaces/gpu/cnn.yaml
    explicit: bool = field(default=False, compare=False)  # SPACE= named the file, overriding the profile

    @property
    def fingerprint(self) -> str:
        body = json.dumps({"model": self.model, "families": self.families}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return {"model": self.model, "families": self.families, "profile": self.profile, "source": self.source,
                "explicit": self.explicit}

    @classmethod
    def from_dict(cls, stored: dict) -> SearchSpace:
        """The space a study stored with ``as_dict`` (older studies stored only model and families)."""
        return cls(stored["model"], stored["families"], stored.get("profile"), stored.get("source"),
                   bool(stored.get("explicit")))

    def describe(self) -> str:
        """One line for the start of a search, e.g. ``space studies/spaces/gpu/cnn.yaml (GPU profile: accelerator found)``."""
        if self.source is None:
            return "space as stored with the study"
        profile = f"{self.profile.upper()} profile" if self.profile else "profile unknown"
        if self.explicit:
            default = _shown(PROFILE_DIRS[self.profile] / f"{self.model}.yaml") if self.profile else "the profile's"
            return f"space {self.source} (SPACE=, instead of the {profile}'s {default})"
        return f"space {self.source} ({profile}: {PROFILE_REASONS.get(self.profile, '?')})"

    def change_from(self, stored: dict | None) -> str:
        """Why a study's stored space is not this one, in words, for the resume refusal."""
        old = SearchSpace.from_dict(stored) if stored and "families" in stored else SearchSpace("?", {})
        if old.profile and self.profile and old.profile != self.profile and not (old.explicit or self.explicit):
            keep = f", pass SPACE={old.source} to keep its space" if self.model != "all" else ""
            return (f"was created with the {old.profile.upper()} profile's search space ({old.source}) and this run "
                    f"has the {self.profile.upper()} profile's ({self.source}); resume it on a {old.profile.upper()} "
                    f"machine{keep}, or use a new STUDY name")
        return (f"was created with a different search space (MODEL, SPACE or FIX changed; the study's: {_origin(old)}; "
                f"this run's: {_origin(self)}); use a new STUDY name or restore the old space")

    def suggest(self, trial: optuna.Trial) -> tuple[str, dict]:
        """Ask the trial for every parameter; return (family, flat params without prefix)."""
        if self.model == "all":
            family = trial.suggest_categorical("family", sorted(self.families))
            prefix = f"{family}."
        else:
            family, prefix = self.model, ""
        params: dict = {}
        section = self.families[family]
        for name, spec in {**section["training"], **section["model"]}.items():
            if not _condition_holds(spec, params):
                continue
            params[name] = _suggest_one(trial, prefix + name, spec)
        return family, params


def _origin(space: SearchSpace) -> str:
    profile = f"{space.profile.upper()} profile" if space.profile else "profile not recorded"
    if space.explicit:
        return f"SPACE={space.source} instead of the {profile}'s file"
    return f"{space.source or 'file not recorded'}, {profile}"


def _condition_holds(spec, params: dict) -> bool:
    if not isinstance(spec, dict) or "when" not in spec:
        return True
    return all(params.get(key) == value for key, value in spec["when"].items())


def _suggest_one(trial: optuna.Trial, name: str, spec):
    if not isinstance(spec, dict):
        return spec  # fixed value
    kind, log, step = spec["type"], bool(spec.get("log", False)), spec.get("step")
    if kind == "float":
        return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=log,
                                   step=None if step is None else float(step))
    if kind == "int":
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=log, step=int(step or 1))
    return trial.suggest_categorical(name, list(spec["choices"]))


# the keys each kind of entry may have; anything else is a typo that would otherwise be silently ignored
KEYS = {"float": ("type", "low", "high", "log", "step", "when"),
        "int": ("type", "low", "high", "log", "step", "when"),
        "categorical": ("type", "choices", "when")}
SECTIONS = ("family", "training", "model")


def _is_number(value, kind: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return kind == "float" or float(value).is_integer()


def _entry_mistakes(name: str, spec, earlier: set[str]) -> list[str]:
    """Every mistake of one entry, each as ``name: key: what to do`` (empty for a fixed value)."""
    if not isinstance(spec, dict):
        return []
    kind = spec.get("type")
    if kind not in KINDS:
        return [f"{name}: type: must be one of {', '.join(KINDS)}, not {kind!r} (or write a plain value to fix it)"]
    mistakes = [f"{name}: {key}: not a key of a {kind} entry; use {', '.join(KEYS[kind])}"
                for key in spec if key not in KEYS[kind]]
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            mistakes.append(f"{name}: choices: a categorical needs a non-empty choices list, e.g. choices: [32, 64]")
    else:
        mistakes += _range_mistakes(name, spec, kind)
    when = spec.get("when")
    if when is not None:
        if not isinstance(when, dict) or not when:
            mistakes.append(f"{name}: when: needs a mapping of earlier parameters to values, e.g. when: {{version: v1}}")
        else:
            mistakes += [f"{name}: when: {key!r} is not a parameter defined above {name}; list it earlier"
                         for key in when if key not in earlier]
    return mistakes


def _range_mistakes(name: str, spec: dict, kind: str) -> list[str]:
    """The mistakes of a float or int range: its bounds, ``log`` and ``step`` (Optuna's own arguments)."""
    number, example = ("a number", "1.0e-3") if kind == "float" else ("a whole number", "2")
    mistakes = []
    for key in ("low", "high"):
        if key not in spec:
            mistakes.append(f"{name}: {key}: missing; a range needs low and high")
        elif not _is_number(spec[key], kind):
            mistakes.append(f"{name}: {key}: {spec[key]!r} is not {number}; write e.g. {key}: {example}")
    bounds_ok = not mistakes
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        mistakes.append(f"{name}: log: {log!r} is not true or false")
        log = False
    step_ok = step is None or (_is_number(step, kind) and step > 0 and not log)
    if step is not None and not (_is_number(step, kind) and step > 0):
        mistakes.append(f"{name}: step: {step!r} is not {number} above 0")
    elif step is not None and log:
        mistakes.append(f"{name}: step: a log range cannot have a step; drop step or log")
    if bounds_ok:
        low, high = spec["low"], spec["high"]
        if low > high:
            mistakes.append(f"{name}: low: {low} is above high {high}; needs low <= high")
        elif log and low <= 0:
            mistakes.append(f"{name}: low: a log range needs low > 0 (is {low})")
        elif step is not None and step_ok and not _is_multiple(high - low, step):
            mistakes.append(f"{name}: step: high - low ({high} - {low}) is not a multiple of step {step}; "
                            "change high or step")
    return mistakes


def _is_multiple(span: float, step: float) -> bool:
    ratio = span / step
    return abs(ratio - round(ratio)) < 1e-9 * max(1.0, abs(ratio))


def _file_mistakes(path: Path, content) -> list[str]:
    """Every mistake of a space file, one line each: file, parameter, key and what to do."""
    if not isinstance(content, dict):
        return [f"{path}: needs 'training:' and 'model:' sections (found {type(content).__name__})"]
    mistakes = [f"{path}: {key}: not a section; use {', '.join(SECTIONS)}" for key in content if key not in SECTIONS]
    earlier: set[str] = set()
    for section in ("training", "model"):
        entries = content.get(section)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            mistakes.append(f"{path}: {section}: needs 'name: value' entries, one a line")
            continue
        for name, spec in entries.items():
            mistakes += [f"{path}: {section}.{line}" for line in _entry_mistakes(str(name), spec, earlier)]
            earlier.add(str(name))
    return mistakes


def _parse_value(text: str):
    return yaml.safe_load(text)


def load_family_space(family: str, spaces_dir: Path = SPACES_DIR, space_file: Path | None = None,
                      fixed: dict | None = None) -> dict:
    """Read one family's space file and apply FIX= overrides."""
    path = Path(space_file) if space_file else spaces_dir / f"{family}.yaml"
    if not path.is_file():
        raise SearchConfigError(f"SPACE={path}: search-space file does not exist")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SearchConfigError(f"{path}: not valid YAML ({first_line(exc)})") from None
    mistakes = _file_mistakes(path, content)
    if mistakes:
        raise SearchConfigError("\n".join(mistakes))
    sections = {"training": dict(content.get("training") or {}), "model": dict(content.get("model") or {})}
    for name, value in (fixed or {}).items():
        section = next((s for s in sections.values() if name in s), None)
        if section is None:
            known = ", ".join(sorted({*sections["training"], *sections["model"]}))
            raise SearchConfigError(f"FIX={name}=…: {family} has no parameter {name!r}; known: {known}")
        section[name] = value
    return sections


def load_space(model: str, *, space_file: str | None = None, fixed: dict | None = None,
               device: str | None = None) -> SearchSpace:
    """The search space for MODEL= (a family or ``all``) on DEVICE (default: what Keras trains on here).

    The device text picks the profile (:func:`profile_for`); an explicit
    ``space_file`` (SPACE=) is read instead of the profile's file.
    """
    if device is None:
        from search.environment import device_description  # imports Keras: only when a search really starts

        device = device_description()
    profile = profile_for(device)
    spaces_dir = PROFILE_DIRS[profile]
    if model == "all":
        if space_file:
            raise SearchConfigError("SPACE= applies to one family; MODEL=all reads every family's own file")
        families = {name: load_family_space(name, spaces_dir) for name in FAMILIES}
        if fixed:
            raise SearchConfigError("FIX= applies to one family; with MODEL=all edit the space files instead")
        return SearchSpace("all", families, profile, _shown(spaces_dir) + "/*.yaml")
    if model not in FAMILIES:
        raise SearchConfigError(f"MODEL={model}: unknown model; choose one of {', '.join(FAMILIES)} or all")
    families = {model: load_family_space(model, spaces_dir, space_file and Path(space_file), fixed)}
    return SearchSpace(model, families, profile, space_file or _shown(spaces_dir / f"{model}.yaml"),
                       explicit=bool(space_file))


def parse_fixed(items: list[str]) -> dict:
    """``["version=v1", "alpha=0.25"]`` → ``{"version": "v1", "alpha": 0.25}`` (YAML scalars)."""
    fixed = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SearchConfigError(f"FIX={item}: expected name=value, e.g. FIX=\"version=v1 alpha=0.25\"")
        fixed[name.strip()] = _parse_value(value.strip())
    return fixed
