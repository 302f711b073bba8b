"""Tests for keras_dc.evaluation: top-k, weighted k-NN and cluster quality against brute-force references."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from keras_dc import evaluation


def _brute_knn_scores(train, train_labels, queries, num_classes, k, temperature):
    """One query at a time: cosine to every training row, the k best vote exp(sim / T) for their class."""
    scores = np.zeros((len(queries), num_classes))
    for row, query in enumerate(queries):
        similarity = [float(query @ item) / (np.linalg.norm(query) * np.linalg.norm(item)) for item in train]
        for neighbour in np.argsort(similarity)[::-1][:k]:
            scores[row, train_labels[neighbour]] += np.exp(similarity[neighbour] / temperature)
    return scores


def _brute_topk(scores, labels, k):
    hits = [label in sorted(range(len(row)), key=lambda c: (-row[c], c))[:k] for row, label in zip(scores, labels)]
    return float(np.mean(hits))


def test_knn_scores_match_brute_force():
    rng = np.random.default_rng(0)
    train, queries = rng.normal(size=(60, 8)), rng.normal(size=(25, 8))
    labels = rng.integers(0, 4, 60)
    got = evaluation.knn_scores(train, labels, queries, 4, k=7, temperature=0.1)
    np.testing.assert_allclose(got, _brute_knn_scores(train, labels, queries, 4, 7, 0.1), rtol=1e-4)


def test_knn_accuracy_matches_brute_force_topk():
    rng = np.random.default_rng(1)
    train, queries = rng.normal(size=(80, 6)), rng.normal(size=(40, 6))
    train_labels, query_labels = rng.integers(0, 8, 80), rng.integers(0, 8, 40)
    reference = _brute_knn_scores(train, train_labels, queries, 8, 20, 0.07)
    result = evaluation.knn_accuracy(train, train_labels, queries, query_labels, 8)
    assert result["top1"] == pytest.approx(_brute_topk(reference, query_labels, 1))
    assert result["top5"] == pytest.approx(_brute_topk(reference, query_labels, 5))
    assert result["k"] == 20 and result["temperature"] == 0.07


def test_knn_recovers_separated_classes_and_uses_cosine_not_norm():
    rng = np.random.default_rng(2)
    directions = np.eye(3) * 5
    labels = np.repeat(np.arange(3), 30)
    train = (directions[labels] + rng.normal(scale=0.3, size=(90, 3))) * rng.uniform(0.1, 10, (90, 1))
    queries = directions * np.array([[0.01], [100.0], [1.0]])
    result = evaluation.knn_accuracy(train, labels, queries, np.arange(3), 3, k=5)
    assert result["top1"] == 1.0


def test_topk_accuracy_matches_brute_force_with_ties_to_lower_class():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 3, (50, 6)).astype(float)
    labels = rng.integers(0, 6, 50)
    for k in (1, 2, 5, 9):
        assert evaluation.topk_accuracy(scores, labels, k) == pytest.approx(_brute_topk(scores, labels, min(k, 6)))


def _brute_purity(labels, clusters):
    total = 0
    for cluster in set(clusters.tolist()):
        members = labels[clusters == cluster]
        total += max(np.sum(members == label) for label in set(members.tolist()))
    return total / len(labels)


def _brute_hungarian(labels, clusters):
    """Best accuracy over every one-to-one pairing of cluster ids with labels."""
    cluster_set, label_set = sorted(set(clusters.tolist())), sorted(set(labels.tolist()))
    best = 0
    if len(cluster_set) >= len(label_set):
        pairings = (zip(chosen, label_set) for chosen in itertools.permutations(cluster_set, len(label_set)))
    else:
        pairings = (zip(cluster_set, chosen) for chosen in itertools.permutations(label_set, len(cluster_set)))
    for pairing in pairings:
        best = max(best, sum(np.sum((clusters == c) & (labels == y)) for c, y in pairing))
    return best / len(labels)


@pytest.mark.parametrize("num_clusters, num_classes, seed", [(5, 3, 0), (3, 5, 1), (4, 4, 2), (6, 4, 3)])
def test_cluster_metrics_match_sklearn_and_brute_force(num_clusters, num_classes, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, 200) * 3 + 1  # ids need not be 0..C-1
    clusters = np.where(rng.random(200) < 0.6, labels % num_clusters, rng.integers(0, num_clusters, 200)) * 7 + 2
    result = evaluation.cluster_metrics(labels, clusters)
    assert result["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters))
    assert result["ari"] == pytest.approx(adjusted_rand_score(labels, clusters))
    assert result["purity"] == pytest.approx(_brute_purity(labels, clusters))
    assert result["accuracy"] == pytest.approx(_brute_hungarian(labels, clusters))
    assert result["num_clusters"] == len(np.unique(clusters)) and result["images"] == 200


def test_a_relabelled_perfect_clustering_scores_one():
    labels = np.repeat(np.arange(4), 10)
    clusters = np.array([9, 2, 5, 0])[labels]
    result = evaluation.cluster_metrics(labels, clusters)
    assert result["accuracy"] == result["purity"] == pytest.approx(1.0)
    assert result["nmi"] == pytest.approx(1.0) and result["ari"] == pytest.approx(1.0)


def test_kmeans_cluster_metrics_find_separated_blobs():
    # seed 0 puts two initial centroids in one blob, a local optimum Lloyd cannot leave
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(4), 50)
    features = (rng.normal(size=(4, 16)) * 10)[labels] + rng.normal(size=(200, 16))
    result = evaluation.kmeans_cluster_metrics(features.astype(np.float32), labels, 4, 8, 10, seed=1)
    assert result["accuracy"] == pytest.approx(1.0) and result["nmi"] == pytest.approx(1.0)
    assert result["k"] == 4 and result["pca_dim"] == 8
