"""A study's configuration: named arms on shared data, one held-out evaluation, read from a YAML (or JSON) file.

    name: first
    compare_to: base_rationale           # every other arm gets paired intervals against this one
    data: {train_triples: 600, max_chars: 300, max_prompt: 192, val_size: 16}
    evaluation: {retrieval_queries: 400, lee_documents: 50, perplexity_texts: 100, rationale_length: 48}
    arms:
      - {name: base_prompt_only, kind: base, rationale: false}
      - {name: base_rationale, kind: base}
      - {name: contrastive, kind: contrastive, rationale: false, settings: {examples: 64, epochs: 4}}
      - {name: grace_demo, kind: grace, settings: {}}    # settings: fields of grace.training_run.TrainingSettings
      - {name: base_rationale_response, kind: base, pooling_span: response}
      - {name: grace_response, kind: grace, pooling_span: response, compare_to: [base_rationale_response]}

Arm kinds: `base` (the model as it is), `contrastive` (`grace.study.contrastive`; settings: examples, epochs, lr,
batch_size) and `grace` (verl GRPO with the `hidden` reward, `grace.training_run`; settings: the fields of its
`TrainingSettings`, such as steps, lr, prompts, rollouts, response_length, variant, val_every). Data, evaluation and
the pooling span are the study's, shared by all arms. An unknown key anywhere is an error that names it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from grace.pooling import POOLING_SPANS
from grace.training_run import DataConfig, TrainingSettings

ARM_KINDS = ("base", "contrastive", "grace")
CONTRASTIVE_SETTINGS = {"examples", "epochs", "lr", "batch_size"}
# A GRACE arm sets its training; the pooling span is the arm's own key (its evaluation pools the same way).
GRACE_SETTINGS = {f.name for f in dataclasses.fields(TrainingSettings)} - {"pooling_span"}


@dataclass
class ArmConfig:
    name: str
    kind: str
    rationale: bool = True  # embed with a generated rationale (False: the prompt alone)
    pooling_span: str = "prompt+response"  # in the reward (grace) and in the evaluation
    settings: dict = field(default_factory=dict)
    compare_to: list[str] | str | None = None  # also compared with these arms (say, the base model in the same span)

    def references(self) -> list[str]:
        """The arms this one is compared with besides the study's `compare_to`."""
        return [self.compare_to] if isinstance(self.compare_to, str) else list(self.compare_to or [])


@dataclass
class EvaluationConfig:
    retrieval_queries: int = 400
    lee_documents: int = 50
    perplexity_texts: int = 100
    kl_texts: int = 50  # held-out documents whose rationales measure KL(trained || base)
    rationale_length: int = 48
    batch_size: int = 16
    bootstrap_resamples: int = 2000


@dataclass
class StudyConfig:
    name: str
    arms: list[ArmConfig]
    compare_to: str = "base_rationale"
    model: str | None = None  # default: the packaged SmolLM2-135M-Instruct
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def arm(self, name: str) -> ArmConfig:
        return next(arm for arm in self.arms if arm.name == name)


def _build(cls, values, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


def validate_arm(arm: ArmConfig) -> None:
    where = f"arm {arm.name!r}"
    if arm.kind not in ARM_KINDS:
        raise ValueError(f"{where}: kind must be one of {ARM_KINDS}, got {arm.kind!r}")
    if arm.pooling_span not in POOLING_SPANS:
        raise ValueError(f"{where}: pooling_span must be one of {POOLING_SPANS}, got {arm.pooling_span!r}")
    if arm.pooling_span == "response" and not arm.rationale:
        raise ValueError(f"{where}: pooling_span 'response' pools the rationale alone and needs rationale: true")
    allowed = {"base": set(), "contrastive": CONTRASTIVE_SETTINGS, "grace": GRACE_SETTINGS}
    unknown = sorted(set(arm.settings) - allowed[arm.kind])
    if unknown:
        raise ValueError(f"{where}: settings {unknown} do not apply to a {arm.kind} arm; allowed: "
                         f"{sorted(allowed[arm.kind]) or 'none'}")


def load_config(path: Path) -> StudyConfig:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or "arms" not in raw or "name" not in raw:
        raise ValueError(f"{path}: a study needs `name` and `arms`")
    values = dict(raw)
    values["arms"] = [_build(ArmConfig, arm, f"{path}: arms[{i}]") for i, arm in enumerate(raw["arms"] or [])]
    values["data"] = _build(DataConfig, raw.get("data") or {}, f"{path}: data")
    values["evaluation"] = _build(EvaluationConfig, raw.get("evaluation") or {}, f"{path}: evaluation")
    config = _build(StudyConfig, values, str(path))
    names = [arm.name for arm in config.arms]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{path}: arm names must be present and unique, got {names}")
    for arm in config.arms:
        validate_arm(arm)
    if config.compare_to not in names:
        raise ValueError(f"{path}: compare_to={config.compare_to!r} is not an arm ({names})")
    for arm in config.arms:
        for reference in arm.references():
            if reference not in names or reference == arm.name:
                raise ValueError(f"{path}: arm {arm.name!r}: compare_to {reference!r} is not another arm ({names})")
    return config
