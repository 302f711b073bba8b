"""Label-based measures of frozen features: top-k accuracy, weighted k-NN and cluster quality.

Pure numpy / scikit-learn / scipy on arrays, so that the linear-probe tool, the
training-time callback and the tests share one definition of every figure.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics

from keras_dc import kmeans
from keras_dc.pca import l2_normalize

KNN_NEIGHBOURS = 20
KNN_TEMPERATURE = 0.07  # Wu et al. 2018: each neighbour votes exp(similarity / temperature)
_KNN_BATCH = 1024


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores (ties go to the lower class index)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def knn_scores(train_features: np.ndarray, train_labels: np.ndarray, query_features: np.ndarray,
               num_classes: int, k: int = KNN_NEIGHBOURS, temperature: float = KNN_TEMPERATURE) -> np.ndarray:
    """Class scores of each query: its k most cosine-similar training rows vote exp(sim / temperature).

    This is the weighted k-NN of Wu et al. (2018); returns a (queries, num_classes) array.
    """
    bank = l2_normalize(train_features)
    queries = l2_normalize(query_features)
    k = min(k, bank.shape[0])
    labels = np.asarray(train_labels, np.int64)
    scores = np.zeros((queries.shape[0], num_classes), np.float64)
    for start in range(0, queries.shape[0], _KNN_BATCH):
        similarity = queries[start:start + _KNN_BATCH] @ bank.T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        weights = np.exp(np.take_along_axis(similarity, nearest, axis=1).astype(np.float64) / temperature)
        rows = np.repeat(np.arange(nearest.shape[0]), k) + start
        np.add.at(scores, (rows, labels[nearest].ravel()), weights.ravel())
    return scores


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray, query_features: np.ndarray,
                 query_labels: np.ndarray, num_classes: int, k: int = KNN_NEIGHBOURS,
                 temperature: float = KNN_TEMPERATURE) -> dict:
    """Top-1 and top-5 of the weighted k-NN classifier, with its settings, as a JSON-ready dict."""
    scores = knn_scores(train_features, train_labels, query_features, num_classes, k, temperature)
    return {"top1": topk_accuracy(scores, query_labels, 1), "top5": topk_accuracy(scores, query_labels, 5),
            "k": int(k), "temperature": float(temperature), "weighting": "exp(cosine / temperature)"}


def contingency(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Counts of (cluster, class) pairs: a (clusters, classes) integer matrix over the ids that occur."""
    _, cluster_index = np.unique(clusters, return_inverse=True)
    _, label_index = np.unique(labels, return_inverse=True)
    table = np.zeros((cluster_index.max() + 1, label_index.max() + 1), np.int64)
    np.add.at(table, (cluster_index, label_index), 1)
    return table


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of images whose label is the majority label of their cluster."""
    table = contingency(labels, clusters)
    return float(table.max(axis=1).sum() / table.sum())


def hungarian_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy under the best one-to-one map from clusters to classes (unmatched ones count as wrong)."""
    table = contingency(labels, clusters)
    rows, columns = linear_sum_assignment(table, maximize=True)
    return float(table[rows, columns].sum() / table.sum())


def cluster_metrics(labels: np.ndarray, clusters: np.ndarray) -> dict:
    """NMI, ARI, purity and Hungarian-matched accuracy of a clustering against labels."""
    return {"nmi": float(metrics.normalized_mutual_info_score(labels, clusters)),
            "ari": float(metrics.adjusted_rand_score(labels, clusters)),
            "purity": purity(labels, clusters), "accuracy": hungarian_accuracy(labels, clusters),
            "num_clusters": int(len(np.unique(clusters))), "images": int(len(labels))}


def kmeans_cluster_metrics(features: np.ndarray, labels: np.ndarray, k: int, pca_dim: int, iterations: int,
                           seed: int) -> dict:
    """Clusters features the way training does (PCA-whitening, L2, the same k-means) and scores them against labels."""
    result, _, _ = kmeans.cluster_array(features, k, 1, pca_dim, iterations, seed)
    return {**cluster_metrics(labels, result.cluster_ids), "k": int(k), "pca_dim": int(pca_dim)}
