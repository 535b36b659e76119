"""The contrastive fine-tuning baseline: the same model and training triples as GRACE, the contrastive signal used
as a loss instead of a reward.

    python -m grace.study.contrastive --model PATH --data train.parquet --examples 64 --out DIR

The embedding is GRACE's prompt-only one (the paper's "direct forward"): the training chat prompt of a text, the
last layer after the final norm, the mean over every token after the system prefix, L2-normalised, so the
trained model is scored by the same `GraceEncoder(..., rationale=False)` as the base model. It is trained with
sentence-transformers' trainer and `MultipleNegativesRankingLoss` (in-batch negatives plus each triple's hard
negative, as LLM2Vec and E5-style contrastive training do) on (query, positive, negative) triples read from a
GRACE parquet file. The model is saved as a Hugging Face causal-LM folder (weights, tokenizer, generation
config), like a merged GRACE checkpoint.

Training keeps a checkpoint (weights, optimizer, scheduler, random states) every `checkpoint_steps` optimizer
steps and resumes from the latest one when it is run again with the same settings and triples, so a run of an hour
or more survives its process; the checkpoints are deleted once the model and its summary are written.

Simplifications: the whole model is trained in float32 on the CPU (no LoRA, no gradient cache), one seed, no
evaluation during training; the LM head (when it is not tied to the embeddings) is frozen, since the embedding
never uses it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
from sentence_transformers.base.modules.input_module import InputModule
from transformers import TrainerCallback

from grace.embedding import position_ids_from_mask
from grace.encoder import left_pad
from grace.pooling import pool_hidden_states, system_prefix_length
from grace.prompts import SYSTEM_PROMPT, chat_prompt_ids

SUMMARY_FILE = "contrastive_summary.json"
CHECKPOINTS_DIR = "checkpoints"
PROGRESS_FILE = "contrastive_progress.json"  # in a checkpoint, written last: the checkpoint is complete


class GracePromptEmbedding(InputModule):
    """A causal LM as a sentence-transformers input module producing GRACE's prompt-only embedding."""

    config_file_name = "grace_prompt_embedding.json"  # beside the causal LM's own config.json
    config_keys = ["max_length", "system_prompt"]

    def __init__(self, model, tokenizer, max_length: int = 1024, system_prompt: str = SYSTEM_PROMPT):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.system_prompt = max_length, system_prompt
        self.prefix_len = system_prefix_length(tokenizer, system_prompt)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def preprocess(self, inputs, prompt=None, **kwargs) -> dict[str, torch.Tensor]:
        prompts = [chat_prompt_ids(self.tokenizer, text, self.max_length, self.system_prompt) for text in inputs]
        input_ids, attention_mask = left_pad(prompts, self.pad_id, "cpu")
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(self, features: dict, **kwargs) -> dict:
        mask = features["attention_mask"]
        hidden = self.model.get_decoder()(input_ids=features["input_ids"], attention_mask=mask,
                                          position_ids=position_ids_from_mask(mask), use_cache=False).last_hidden_state
        features["sentence_embedding"] = pool_hidden_states(hidden, mask, prefix_len=self.prefix_len, normalize=True)
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.model.config.hidden_size

    def save(self, output_path: str, *args, **kwargs) -> None:
        self.model.save_pretrained(output_path)
        self.tokenizer.save_pretrained(output_path)
        self.save_config(output_path)

    @classmethod
    def from_causal_lm(cls, model_path, **settings) -> "GracePromptEmbedding":
        """The causal LM and tokenizer of a Hugging Face folder, in float32."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        return cls(model, AutoTokenizer.from_pretrained(model_path), **settings)

    @classmethod
    def load(cls, model_name_or_path: str, **kwargs) -> "GracePromptEmbedding":
        """The module `save` wrote (sentence-transformers reloads it to resume from a checkpoint)."""
        return cls.from_causal_lm(model_name_or_path, **cls.load_config(model_name_or_path))


def read_triples(parquet: Path, examples: int | None = None, seed: int = 0) -> list[tuple[str, str, str]]:
    """(query, positive, negative) of a GRACE supervised parquet file, shuffled with `seed`, the first `examples`."""
    frame = pd.read_parquet(parquet, columns=["multi_input"])
    triples = [(row["query"], row["instruction"], row["negative_document"]) for row in frame["multi_input"]]
    if not triples:
        raise ValueError(f"{parquet} has no training triples")
    order = torch.randperm(len(triples), generator=torch.Generator().manual_seed(seed)).tolist()
    triples = [triples[i] for i in order]
    if examples is not None:
        if examples > len(triples):
            raise ValueError(f"{examples} training examples asked for, {parquet} has {len(triples)}")
        triples = triples[:examples]
    return triples


def build_model(model_path: Path, max_length: int = 1024):
    """A SentenceTransformer over the causal LM at `model_path`, in float32, LM head frozen when untied."""
    from sentence_transformers import SentenceTransformer

    module = GracePromptEmbedding.from_causal_lm(model_path, max_length=max_length)
    if not module.model.config.tie_word_embeddings:
        module.model.get_output_embeddings().requires_grad_(False)
    return SentenceTransformer(modules=[module], device="cpu")


def mnrl_loss(model, triples, batch_size: int) -> float:
    """Mean MultipleNegativesRankingLoss of `model` over `triples` in batches (no gradient)."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    loss = MultipleNegativesRankingLoss(model)
    values = []
    with torch.no_grad():
        for start in range(0, len(triples), batch_size):
            columns = list(zip(*triples[start : start + batch_size]))
            features = [model.preprocess(list(column)) for column in columns]
            values.append(float(loss(features, labels=None)))
    return sum(values) / len(values)


def train_contrastive(model_path: Path, triples, out: Path, epochs: int = 1, lr: float = 2e-5, batch_size: int = 8,
                      seed: int = 0, max_length: int = 1024, checkpoint_steps: int | None = 25) -> dict:
    """Fine-tune with in-batch-negative InfoNCE; saves the causal LM to `out`; returns the run's summary.

    With `checkpoint_steps`, a checkpoint is kept in `out/checkpoints` every that many optimizer steps, and a run
    with the same settings and triples resumes from it; `train_seconds` then adds the time up to the checkpoint to
    the resumed part's (the steps lost after the checkpoint are not counted: they are trained again).
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    settings = run_settings(triples, epochs, lr, batch_size, seed)
    checkpoints = out / CHECKPOINTS_DIR
    resume, seconds_before = latest_checkpoint(checkpoints, settings) if checkpoint_steps else (None, 0.0)
    torch.manual_seed(seed)
    model = build_model(model_path, max_length)
    loss_before = mnrl_loss(model, triples, batch_size)
    dataset = Dataset.from_dict({"anchor": [t[0] for t in triples], "positive": [t[1] for t in triples],
                                 "negative": [t[2] for t in triples]})
    saving = ({"save_strategy": "steps", "save_steps": checkpoint_steps, "save_total_limit": 1} if checkpoint_steps
              else {"save_strategy": "no"})
    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        learning_rate=lr, warmup_ratio=0.0, seed=seed, data_seed=seed, logging_steps=1, report_to=[], use_cpu=True,
        dataloader_drop_last=False, **saving)
    trainer = SentenceTransformerTrainer(model=model, args=arguments, train_dataset=dataset,
                                         loss=MultipleNegativesRankingLoss(model))
    started = time.perf_counter()
    trainer.add_callback(_RecordProgress(settings, lambda: seconds_before + time.perf_counter() - started))
    if resume is not None:
        print(f"{out}: resuming contrastive training from {resume.name} ({seconds_before:.0f} s trained)", flush=True)
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    seconds = seconds_before + time.perf_counter() - started
    loss_after = mnrl_loss(model, triples, batch_size)
    model[0].save(str(out))  # save_pretrained writes the generation config too
    summary = {**settings, "optimizer_steps": trainer.state.global_step, "train_seconds": seconds,
               "resumed_from_step": step_of_checkpoint(resume) if resume is not None else None,
               "loss_before": loss_before, "loss_after": loss_after,
               "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))  # last: a summary means a complete model
    shutil.rmtree(checkpoints, ignore_errors=True)
    return summary


def latest_checkpoint(checkpoints: Path, settings: dict) -> tuple[Path | None, float]:
    """The latest complete checkpoint in `checkpoints` of a run with `settings`, and the seconds trained up to it.

    Checkpoints of a run with other settings or triples are deleted (training starts again), as are incomplete ones
    (a process killed while saving)."""
    complete = []
    for folder in sorted(checkpoints.glob("checkpoint-*"), key=step_of_checkpoint):
        progress = folder / PROGRESS_FILE
        recorded = json.loads(progress.read_text()) if progress.exists() else None
        if recorded is not None and recorded["settings"] == settings:
            complete.append((folder, recorded["train_seconds"]))
        else:
            print(f"{folder}: {'another run' if recorded else 'an incomplete checkpoint'}; deleted", flush=True)
            shutil.rmtree(folder)
    return complete[-1] if complete else (None, 0.0)


def step_of_checkpoint(folder: Path) -> int:
    """The optimizer step of a trainer checkpoint folder (`checkpoint-<step>`)."""
    return int(folder.name.split("-")[-1])


class _RecordProgress(TrainerCallback):
    """Marks each saved checkpoint complete, with the run's settings and the seconds trained up to it."""

    def __init__(self, settings: dict, seconds):
        self.settings, self.seconds = settings, seconds

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        record = {"settings": self.settings, "train_seconds": self.seconds()}
        (folder / PROGRESS_FILE).write_text(json.dumps(record, indent=2))


def run_settings(triples, epochs: int, lr: float, batch_size: int, seed: int) -> dict:
    """What decides a run's trained model: its settings and a digest of its triples."""
    digest = hashlib.sha256(json.dumps(triples).encode()).hexdigest()
    return {"examples": len(triples), "triples_sha256": digest, "epochs": epochs, "lr": lr, "batch_size": batch_size,
            "seed": seed}


def train_or_reuse(model_path: Path, triples, out: Path, epochs: int, lr: float, batch_size: int, seed: int
                   ) -> dict:
    """The summary of a finished run in `out` with the same settings and triples, else `train_contrastive`'s.

    A study whose evaluation was interrupted then evaluates the model it trained instead of training it again
    (an hour for 4 epochs on 2 cores); a run with other settings, or one without a summary, is trained again (from
    its latest checkpoint when its training was interrupted).
    """
    summary_file = out / SUMMARY_FILE
    if summary_file.exists():
        finished, asked = json.loads(summary_file.read_text()), run_settings(triples, epochs, lr, batch_size, seed)
        if {key: finished.get(key) for key in asked} == asked:
            print(f"{out}: a finished contrastive run with these settings and triples; its model is evaluated, "
                  f"not trained again", flush=True)
            return finished
        print(f"{out}: holds a contrastive run with other settings or triples; training again", flush=True)
    return train_contrastive(model_path, triples, out, epochs, lr, batch_size, seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="causal LM folder to fine-tune")
    parser.add_argument("--data", type=Path, required=True,
                        help="GRACE supervised train.parquet (query/positive/negative)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the trained model")
    parser.add_argument("--examples", type=int, default=None, help="training triples (default: all)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the triples")
    parser.add_argument("--lr", type=float, default=2e-5, help="learning rate (AdamW, linear decay)")
    parser.add_argument("--batch_size", type=int, default=8, help="triples per batch (in-batch negatives)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle and training seed")
    parser.add_argument("--max_length", type=int, default=1024, help="max prompt tokens per text")
    parser.add_argument("--checkpoint_steps", type=int, default=25,
                        help="keep a resumable checkpoint every this many optimizer steps (0: none)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    triples = read_triples(args.data, args.examples, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = train_contrastive(args.model, triples, args.out, args.epochs, args.lr, args.batch_size, args.seed,
                                args.max_length, args.checkpoint_steps or None)
    print(f"trained on {summary['examples']} triples in {summary['train_seconds']:.0f} s: loss "
          f"{summary['loss_before']:.4f} -> {summary['loss_after']:.4f}; model in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
