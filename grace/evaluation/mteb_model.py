"""GraceEncoder as an mteb 2.x model, with metadata that describes the model actually evaluated."""

from __future__ import annotations

from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction

from grace.encoder import GraceEncoder

PAPER = "https://arxiv.org/abs/2510.04506"


class GraceMTEBModel(AbsEncoder):
    """Every mteb text (query, document, sentence) is embedded the same way, without task instructions, as
    in the reference; mteb's batches are flattened and handed to `GraceEncoder.encode`."""

    def __init__(self, encoder: GraceEncoder, model_name: str, batch_size: int = 8, rationale: bool = True,
                 revision: str = "local"):
        self.encoder, self.batch_size, self.rationale = encoder, batch_size, rationale
        config = encoder.model.config
        settings = encoder.settings
        self.mteb_model_meta = ModelMeta.create_empty(overwrites=dict(
            name=model_name if "/" in model_name else f"GRACE/{model_name}", revision=revision,
            n_parameters=sum(p.numel() for p in encoder.model.parameters()), embed_dim=config.hidden_size,
            max_tokens=settings.max_input_length + (settings.generation.max_new_tokens if rationale else 0),
            similarity_fn_name=ScoringFunction.COSINE, languages=["eng-Latn"], open_weights=True,
            framework=["PyTorch"], use_instructions=False, reference=PAPER,
        ))

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        texts = [text for batch in inputs for text in batch["text"]]
        return self.encoder.encode(texts, batch_size=self.batch_size, rationale=self.rationale,
                                   show_progress_bar=True)
