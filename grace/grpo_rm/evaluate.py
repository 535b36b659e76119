"""Evaluation of a representation: the head's accuracy, a softmax-regression probe (SR) and kNN on frozen embeddings.

SR: a multinomial logistic regression (scikit-learn, standardised features, C = 1) fitted on the training split's
embeddings. kNN: cosine similarity, k = 20, by majority vote (ties to the lower class index) and weighted by
similarity. Both read embeddings only, so they also score the frozen encoder and the encoder on another corpus.
"""

from __future__ import annotations

import numpy as np
import torch

from grace.grpo_rm.data import LabelledData


def _batches(data: LabelledData, batch_size: int):
    for start in range(0, len(data), batch_size):
        yield data.inputs[start:start + batch_size]


@torch.no_grad()
def embed_and_classify(policy, data: LabelledData, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, dim), predicted classes (N,)) of the whole split, in order."""
    was_training = policy.training
    policy.eval()
    embeddings, predictions = [], []
    for inputs in _batches(data, batch_size):
        h, z = policy(inputs)
        embeddings.append(h.float().cpu())
        predictions.append(z.argmax(-1).cpu())
    policy.train(was_training)
    return torch.cat(embeddings).numpy(), torch.cat(predictions).numpy()


@torch.no_grad()
def embed(encoder, data: LabelledData, batch_size: int = 128) -> np.ndarray:
    was_training = encoder.training
    encoder.eval()
    embeddings = [encoder(inputs).float().cpu() for inputs in _batches(data, batch_size)]
    encoder.train(was_training)
    return torch.cat(embeddings).numpy()


def probe_predictions(train_embeddings: np.ndarray, train_labels: np.ndarray, test_embeddings: np.ndarray
                      ) -> np.ndarray:
    """Classes predicted by a softmax regression fitted on the training embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    return probe.fit(train_embeddings, train_labels).predict(test_embeddings)


def knn_predictions(train_embeddings: np.ndarray, train_labels: np.ndarray, test_embeddings: np.ndarray,
                    k: int = 20) -> dict[str, np.ndarray]:
    """Predicted classes by the k most cosine-similar training embeddings: `majority` and `weighted` votes."""
    if k > len(train_labels):
        raise ValueError(f"k = {k} neighbours but only {len(train_labels)} training embeddings")
    train = torch.nn.functional.normalize(torch.as_tensor(train_embeddings, dtype=torch.float64), dim=-1)
    test = torch.nn.functional.normalize(torch.as_tensor(test_embeddings, dtype=torch.float64), dim=-1)
    similarity, neighbours = (test @ train.T).topk(k, dim=-1)
    neighbour_labels = torch.as_tensor(train_labels)[neighbours]
    num_classes = int(train_labels.max()) + 1
    votes = torch.zeros(len(test), num_classes, dtype=torch.float64)
    majority = votes.scatter_add(1, neighbour_labels, torch.ones_like(similarity)).argmax(-1)
    weighted = votes.scatter_add(1, neighbour_labels, similarity).argmax(-1)
    return {"majority": majority.numpy(), "weighted": weighted.numpy()}


def representation_predictions(train_embeddings: np.ndarray, train_labels: np.ndarray, test_embeddings: np.ndarray,
                               k: int = 20) -> dict[str, np.ndarray]:
    """{"sr", "knn_majority", "knn_weighted"}: the classes each predicts for the test embeddings."""
    knn = knn_predictions(train_embeddings, train_labels, test_embeddings, k)
    return {"sr": probe_predictions(train_embeddings, train_labels, test_embeddings),
            "knn_majority": knn["majority"], "knn_weighted": knn["weighted"]}


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy on each class's items (None for a class with no item)."""
    return [float((predictions[labels == c] == c).mean()) if (labels == c).any() else None
            for c in range(num_classes)]


def accuracies(predictions: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Each predictor's accuracy in [0, 1]."""
    return {name: float((predicted == labels).mean()) for name, predicted in predictions.items()}


def representation_scores(train_embeddings: np.ndarray, train_labels: np.ndarray, test_embeddings: np.ndarray,
                          test_labels: np.ndarray, k: int = 20) -> dict[str, float]:
    """{"sr", "knn_majority", "knn_weighted"} accuracies in [0, 1]."""
    return accuracies(representation_predictions(train_embeddings, train_labels, test_embeddings, k), test_labels)
