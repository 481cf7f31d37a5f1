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
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

from models.registry import FAMILIES
from search.errors import SearchConfigError

SPACES_DIR = Path(__file__).resolve().parent.parent / "studies" / "spaces"
KINDS = ("float", "int", "categorical")


@dataclass(frozen=True)
class SearchSpace:
    """The resolved space of one study: per family, the training and model entries."""

    model: str  # a family name or "all"
    families: dict[str, dict]  # family -> {"training": {...}, "model": {...}}

    @property
    def fingerprint(self) -> str:
        body = json.dumps({"model": self.model, "families": self.families}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def as_dict(self) -> dict:
        return {"model": self.model, "families": self.families}

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


def _condition_holds(spec, params: dict) -> bool:
    if not isinstance(spec, dict) or "when" not in spec:
        return True
    return all(params.get(key) == value for key, value in spec["when"].items())


def _suggest_one(trial: optuna.Trial, name: str, spec):
    if not isinstance(spec, dict):
        return spec  # fixed value
    kind = spec["type"]
    if kind == "float":
        return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
    if kind == "int":
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)))
    return trial.suggest_categorical(name, list(spec["choices"]))


def _validate_entry(path: Path, name: str, spec) -> None:
    if not isinstance(spec, dict):
        return
    kind = spec.get("type")
    if kind not in KINDS:
        raise SearchConfigError(f"{path}: {name}: type must be one of {', '.join(KINDS)}")
    if kind in ("float", "int"):
        if "low" not in spec or "high" not in spec or float(spec["low"]) > float(spec["high"]):
            raise SearchConfigError(f"{path}: {name}: needs low <= high")
        if spec.get("log") and float(spec["low"]) <= 0:
            raise SearchConfigError(f"{path}: {name}: a log range needs low > 0")
    elif not spec.get("choices"):
        raise SearchConfigError(f"{path}: {name}: a categorical needs a non-empty choices list")


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
        raise SearchConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    sections = {"training": dict(content.get("training") or {}), "model": dict(content.get("model") or {})}
    for section in sections.values():
        for name, spec in section.items():
            _validate_entry(path, name, spec)
    for name, value in (fixed or {}).items():
        section = next((s for s in sections.values() if name in s), None)
        if section is None:
            known = ", ".join(sorted({*sections["training"], *sections["model"]}))
            raise SearchConfigError(f"FIX={name}=…: {family} has no parameter {name!r}; known: {known}")
        section[name] = value
    return sections


def load_space(model: str, *, space_file: str | None = None, fixed: dict | None = None,
               spaces_dir: Path = SPACES_DIR) -> SearchSpace:
    """The search space for MODEL= (a family or ``all``)."""
    if model == "all":
        if space_file:
            raise SearchConfigError("SPACE= applies to one family; MODEL=all reads every family's own file")
        families = {name: load_family_space(name, spaces_dir) for name in FAMILIES}
        if fixed:
            raise SearchConfigError("FIX= applies to one family; with MODEL=all edit the space files instead")
        return SearchSpace("all", families)
    if model not in FAMILIES:
        raise SearchConfigError(f"MODEL={model}: unknown model; choose one of {', '.join(FAMILIES)} or all")
    return SearchSpace(model, {model: load_family_space(model, spaces_dir, space_file and Path(space_file), fixed)})


def parse_fixed(items: list[str]) -> dict:
    """``["version=v1", "alpha=0.25"]`` → ``{"version": "v1", "alpha": 0.25}`` (YAML scalars)."""
    fixed = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SearchConfigError(f"FIX={item}: expected name=value, e.g. FIX=\"version=v1 alpha=0.25\"")
        fixed[name.strip()] = _parse_value(value.strip())
    return fixed
