"""A study's configuration: named arms on shared data, one held-out evaluation, read from a YAML (or JSON) file.

    name: first
    compare_to: base_rationale           # every other arm gets paired intervals against this one
    data: {train_triples: 600, max_chars: 300, max_prompt: 192, val_size: 16}
    evaluation: {part: test, lee_documents: 50, perplexity_texts: 100, rationale_length: 48,
                 mteb_folder: ../shared/data/mteb-offline, mteb_items: {STS12: 100, Banking77Classification: 300}}
    arms:
      - {name: base_prompt_only, kind: base, rationale: false}
      - {name: base_rationale, kind: base}
      - {name: contrastive, kind: contrastive, rationale: false, settings: {examples: 64, epochs: 4}}
      - {name: grace_demo, kind: grace, seeds: [0, 1, 2], settings: {}}  # settings: grace.training_run.TrainingSettings
      - {name: base_rationale_response, kind: base, pooling_span: response}
      - {name: grace_response, kind: grace, pooling_span: response, compare_to: [base_rationale_response]}

Arm kinds: `base` (the model as it is), `contrastive` (`grace.study.contrastive`; settings: examples, epochs, lr,
batch_size), `grace` (verl GRPO with the `hidden` reward, `grace.training_run`; settings: the fields of its
`TrainingSettings`, such as steps, lr, prompts, rollouts, response_length, variant, val_every) and
`sentence_transformer` (another embedding model as an anchor, `rationale: false`; setting: model, a folder, default
the packaged all-MiniLM-L6-v2). Data and evaluated items are the study's, shared by all arms. A trained arm with
`seeds` runs once per seed (its runs are `<arm>@seed<k>`); its scores are the mean over seeds, with intervals that
resample seeds and items.

Evaluation levers need no training: an arm with `model_from` embeds with the trained model of an earlier trained arm
(same kind; its runs are that arm's runs, seed for seed), and an arm's `evaluation` sets how its rationales are
generated (`rationale_length`, `rationale_temperature`, `rationale_samples`) over the study's:

      - {name: grace_sampled4, kind: grace, pooling_span: response, model_from: grace_response,
         evaluation: {rationale_temperature: 1.0, rationale_samples: 4}}

`primary` names the comparison the study is for, before it runs. An unknown key anywhere is an error that names it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from grace.pooling import POOLING_SPANS
from grace.study.mteb_offline import MTEB_OFFLINE_TASKS
from grace.training_run import DataConfig, TrainingSettings

ARM_KINDS = ("base", "contrastive", "grace", "sentence_transformer")
TRAINED_KINDS = ("contrastive", "grace")  # arms that train the study's model
CONTRASTIVE_SETTINGS = {"examples", "epochs", "lr", "batch_size"}
# A GRACE arm sets its training; the pooling span is the arm's own key (its evaluation pools the same way).
# A run's training seed comes from the arm's `seeds`.
GRACE_SETTINGS = {f.name for f in dataclasses.fields(TrainingSettings)} - {"pooling_span", "seed"}
# The evaluation keys an arm may set for itself: how it generates rationales. What is scored stays the study's, so
# that every pair of arms is scored on the same items.
ARM_EVALUATION_KEYS = ("rationale_length", "rationale_temperature", "rationale_samples")


@dataclass
class ArmConfig:
    name: str
    kind: str
    rationale: bool = True  # embed with a generated rationale (False: the prompt alone)
    pooling_span: str = "prompt+response"  # in the reward (grace) and in the evaluation
    settings: dict = field(default_factory=dict)
    compare_to: list[str] | str | None = None  # also compared with these arms (say, the base model in the same span)
    seeds: list[int] | None = None  # a trained arm run once per training seed; its score is their mean
    model_from: str | None = None  # embed with this earlier trained arm's model(s) instead of training (its seeds)
    evaluation: dict = field(default_factory=dict)  # ARM_EVALUATION_KEYS over the study's evaluation

    def runs(self) -> list[tuple[str, int | None]]:
        """(run name, training seed) of each of the arm's runs: the arm itself, or one run per seed."""
        return [(self.name, None)] if self.seeds is None else [(f"{self.name}@seed{s}", s) for s in self.seeds]

    def references(self) -> list[str]:
        """The arms this one is compared with besides the study's `compare_to`."""
        return [self.compare_to] if isinstance(self.compare_to, str) else list(self.compare_to or [])


@dataclass
class EvaluationConfig:
    part: str = "test"  # the held-out part scored: "test" (reported) or "dev" (what choices of settings look at)
    retrieval_queries: int | None = None  # None: every query of the part (460 test, 459 dev)
    lee_documents: int = 50  # LeeSTS is in the test part only
    mteb_folder: str | None = None  # MTEB-offline data folder (eval_mteb.py --data_folder); relative to the cwd
    mteb_items: dict[str, int] = field(default_factory=dict)  # MTEB-offline task -> items per part (none: off)
    generative_items: int = 0  # DescriptionChoice items of the part (grace.study.generative); 0: off
    perplexity_texts: int = 100
    kl_texts: int = 50  # held-out documents whose rationales measure KL(trained || base)
    rationale_length: int = 48
    # 0: greedy rationales; above 0, sampled at this temperature (the paper evaluates at 1.0); the diversity and KL
    # measures then read each text's first sample
    rationale_temperature: float = 0.0
    rationale_samples: int = 1  # sampled rationales per text, their embeddings averaged (grace.encoder)
    batch_size: int = 16
    bootstrap_resamples: int = 2000


@dataclass
class StudyConfig:
    name: str
    arms: list[ArmConfig]
    compare_to: str = "base_rationale"
    primary: str | None = None  # the primary comparison, named before the study runs ("grace vs contrastive on ...")
    model: str | None = None  # default: the packaged SmolLM2-135M-Instruct
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def arm(self, name: str) -> ArmConfig:
        return next(arm for arm in self.arms if arm.name == name)

    def arm_evaluation(self, arm: ArmConfig) -> EvaluationConfig:
        """The study's evaluation with the arm's own rationale generation."""
        return dataclasses.replace(self.evaluation, **arm.evaluation)


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
    if arm.kind == "sentence_transformer" and arm.rationale:
        raise ValueError(f"{where}: a sentence_transformer arm embeds texts as they are: set rationale: false")
    if arm.seeds is not None:
        if arm.kind not in TRAINED_KINDS:
            raise ValueError(f"{where}: a {arm.kind} arm is not trained, so it takes no seeds")
        if not arm.seeds or len(set(arm.seeds)) != len(arm.seeds) or not all(isinstance(s, int) for s in arm.seeds):
            raise ValueError(f"{where}: seeds must be distinct integers, got {arm.seeds}")
    if "seed" in arm.settings:
        raise ValueError(f"{where}: give training seeds as the arm's `seeds`, not as a setting")
    unknown = sorted(set(arm.evaluation) - set(ARM_EVALUATION_KEYS))
    if unknown:
        raise ValueError(f"{where}: evaluation keys {unknown} are the study's; an arm sets only {ARM_EVALUATION_KEYS}")
    if arm.model_from is not None and (arm.settings or arm.seeds is not None):
        raise ValueError(f"{where}: an arm with model_from takes its model, settings and seeds from "
                         f"{arm.model_from!r}; remove its settings and seeds")
    allowed = {"base": set(), "contrastive": CONTRASTIVE_SETTINGS, "grace": GRACE_SETTINGS,
               "sentence_transformer": {"model"}}
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
    evaluation = config.evaluation
    if evaluation.part not in ("test", "dev"):
        raise ValueError(f"{path}: evaluation.part must be 'test' or 'dev', got {evaluation.part!r}")
    validate_generation(evaluation, f"{path}: evaluation")
    for arm in config.arms:
        if arm.evaluation:
            validate_generation(config.arm_evaluation(arm), f"{path}: arm {arm.name!r}: evaluation")
    unknown_tasks = sorted(set(evaluation.mteb_items) - set(MTEB_OFFLINE_TASKS))
    if unknown_tasks:
        raise ValueError(f"{path}: evaluation.mteb_items: unknown task(s) {unknown_tasks}; known: "
                         f"{list(MTEB_OFFLINE_TASKS)}")
    if config.compare_to not in names:
        raise ValueError(f"{path}: compare_to={config.compare_to!r} is not an arm ({names})")
    for arm in config.arms:
        for reference in arm.references():
            if reference not in names or reference == arm.name:
                raise ValueError(f"{path}: arm {arm.name!r}: compare_to {reference!r} is not another arm ({names})")
    for index, arm in enumerate(config.arms):
        if arm.model_from is not None:
            arm.seeds = _trained_source(config.arms[:index], arm, str(path)).seeds
    return config


def validate_generation(evaluation: EvaluationConfig, where: str) -> None:
    if evaluation.rationale_length < 1:
        raise ValueError(f"{where}: rationale_length must be >= 1, got {evaluation.rationale_length}")
    if evaluation.rationale_temperature < 0 or evaluation.rationale_samples < 1:
        raise ValueError(f"{where}: rationale_temperature must be >= 0 and rationale_samples >= 1, got "
                         f"{evaluation.rationale_temperature} and {evaluation.rationale_samples}")
    if evaluation.rationale_samples > 1 and evaluation.rationale_temperature == 0:
        raise ValueError(f"{where}: rationale_samples={evaluation.rationale_samples} averages sampled rationales: set "
                         "rationale_temperature above 0 (greedy gives the same rationale each time)")


def _trained_source(earlier: list[ArmConfig], arm: ArmConfig, path: str) -> ArmConfig:
    """The arm whose trained model `arm` evaluates: listed before it (so it has run first), trained, of its kind."""
    where = f"{path}: arm {arm.name!r}: model_from {arm.model_from!r}"
    source = next((other for other in earlier if other.name == arm.model_from), None)
    if source is None:
        raise ValueError(f"{where} is not an arm listed before it ({[other.name for other in earlier]})")
    if source.kind not in TRAINED_KINDS or source.model_from is not None:
        raise ValueError(f"{where} does not train a model (kind {source.kind!r}"
                         + (f", itself from {source.model_from!r})" if source.model_from else ")"))
    if arm.kind != source.kind:
        raise ValueError(f"{where} is a {source.kind} arm: give this arm the same kind, not {arm.kind!r}")
    return source
