"""The GRPO-RM policy: any encoder f, a head g giving logits over the class set, pi = softmax(g(f(x))).

Encoders: `TextEncoder` wraps a sentence-transformers model (the packaged all-MiniLM-L6-v2, or any
sentence-transformers or plain Hugging Face encoder folder: sentence-transformers adds mean pooling to the latter),
and `DigitsConvEncoder` is a small convolutional net for 8x8 images. Heads: `linear` (W h + b) and `cosine`
(s cos(h, w_j), s = 1 / temperature).

Dropout is switched off for every arm by `disable_dropout`: with it on, rho = pi / pi_old would differ from 1 at the
first inner update from noise alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HEADS = ("linear", "cosine")


class TextEncoder(nn.Module):
    """Texts -> sentence embeddings (B, dim), through a sentence-transformers model, trainable end to end."""

    def __init__(self, folder: str | Path, max_length: int = 64, device: str = "cpu"):
        super().__init__()
        from sentence_transformers import SentenceTransformer

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"encoder folder {folder} does not exist")
        self.model = SentenceTransformer(str(folder), device=device)
        self.model.max_seq_length = max_length
        # sentence-transformers 5.x renamed these; 3.x and 4.x only have the old names
        self._preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize
        self.dim = getattr(self.model, "get_embedding_dimension", self.model.get_sentence_embedding_dimension)()
        if self.dim is None:
            raise ValueError(f"{folder}: sentence-transformers cannot tell the embedding dimension of this model")
        # Sentence embeddings pool the token states; a BERT-style pooler layer is never read, so it is frozen
        # rather than carried as a trainable parameter that no gradient reaches.
        for name, parameter in self.model.named_parameters():
            if ".pooler." in name:
                parameter.requires_grad_(False)

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        features = {name: value.to(device) if isinstance(value, torch.Tensor) else value
                    for name, value in self._preprocess(list(texts)).items()}
        return self.model(features)["sentence_embedding"]

    def save(self, folder: str | Path) -> None:
        """A sentence-transformers folder: `eval_mteb.py --baseline_model` and `--tasks local` load it."""
        self.model.save(str(folder))


class DigitsConvEncoder(nn.Module):
    """8x8 grey images (B, 1, 8, 8) -> embeddings (B, dim): two 3x3 convolutions, global average pooling, a linear
    layer. Small enough to train in seconds; it shows the loop does not care about the modality."""

    def __init__(self, dim: int = 64, channels: int = 32):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, channels // 2, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(channels // 2, channels, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.project = nn.Linear(channels * 4, dim)
        self.dim = dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(images))


class LinearHead(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)

    @property
    def prototypes(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings)


class CosineHead(nn.Module):
    """z_j = cos(h, w_j) / temperature."""

    def __init__(self, dim: int, num_classes: int, temperature: float = 0.05):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"the cosine head's temperature must be positive, got {temperature}")
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=dim ** -0.5)
        self.scale = 1.0 / temperature

    @property
    def prototypes(self) -> torch.Tensor:
        return self.weight

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).T


def make_head(kind: str, dim: int, num_classes: int, temperature: float = 0.05) -> nn.Module:
    if kind == "linear":
        return LinearHead(dim, num_classes)
    if kind == "cosine":
        return CosineHead(dim, num_classes, temperature)
    raise ValueError(f"head must be one of {HEADS}, got {kind!r}")


def disable_dropout(module: nn.Module) -> nn.Module:
    """Set every dropout probability to 0, including the attention dropout that transformers' SDPA path reads
    from a `dropout_prob` / `attention_dropout` attribute rather than from an nn.Dropout module."""
    for child in module.modules():
        if isinstance(child, nn.modules.dropout._DropoutNd):
            child.p = 0.0
        for name in ("dropout_prob", "attention_dropout"):
            if isinstance(getattr(child, name, None), float):
                setattr(child, name, 0.0)
    return module


class RepresentationPolicy(nn.Module):
    """pi(.|x) = softmax(head(encoder(x))): one model, no reference copy."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = disable_dropout(encoder)
        self.head = head

    def forward(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings h (B, dim), logits z (B, C))."""
        embeddings = self.encoder(inputs)
        return embeddings, self.head(embeddings)


def build_policy(encoder: str, num_classes: int, head: str = "linear", temperature: float = 0.05,
                 max_length: int = 64, seed: int = 0, device: str = "cpu") -> RepresentationPolicy:
    """The policy, with the seed set before anything random is built, so that every arm of one seed starts from
    the same encoder and head. `encoder`: `minilm` (the packaged all-MiniLM-L6-v2), `digits-cnn`, or a folder."""
    torch.manual_seed(seed)
    if encoder == "digits-cnn":
        module = DigitsConvEncoder()
    else:
        if encoder == "minilm":
            from grace.data.assets import minilm_folder

            encoder = minilm_folder()
        module = TextEncoder(encoder, max_length=max_length, device=device)
    return RepresentationPolicy(module, make_head(head, module.dim, num_classes, temperature)).to(device)
