"""The linear probe: a separable toy problem, agreement with scikit-learn, the metric and the split."""
import numpy as np
import pytest

from library.pretrained.probe import (confusion_matrix, fit_logistic, linear_probe, mean_per_class_accuracy, per_class_accuracy,
                           stratified_split)

sklearn_linear = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is the reference (test extra)")


def blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + rng.normal(scale=spread, size=(len(y), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # unit norm, like the extracted features
    return x.astype(np.float32), y


def test_probe_recovers_a_linearly_separable_problem():
    x, y = blobs(40, 4, 16, 0.1, seed=0)
    test_x, test_y = blobs(20, 4, 16, 0.1, seed=0)[0][::2], blobs(20, 4, 16, 0.1, seed=0)[1][::2]
    result = linear_probe(x, y, test_x, test_y, ("a", "b", "c", "d"))
    assert result.mean_per_class_acc == 1.0 and result.acc == 1.0
    assert result.confusion.trace() == len(test_y)


def test_mean_per_class_accuracy_matches_scikit_learn_within_a_point():
    x, y = blobs(60, 5, 32, 2.5, seed=1)  # overlapping classes: the regularisation matters
    rng = np.random.default_rng(2)
    order = rng.permutation(len(y))
    train, test = order[:200], order[200:]
    for c in (0.1, 1.0, 100.0):
        ours = fit_logistic(x[train], y[train], 5, c).predict(x[test])
        reference = sklearn_linear.LogisticRegression(C=c, max_iter=10000, tol=1e-8).fit(x[train], y[train])
        theirs = reference.predict(x[test])
        assert abs(mean_per_class_accuracy(y[test], ours, 5) - mean_per_class_accuracy(y[test], theirs, 5)) <= 0.01


def test_the_metric_weights_classes_equally():
    labels = np.array([0] * 8 + [1] * 2)
    predicted = np.array([0] * 8 + [0, 1])
    assert per_class_accuracy(labels, predicted, 3)[:2].tolist() == [1.0, 0.5]
    assert np.isnan(per_class_accuracy(labels, predicted, 3)[2])
    assert mean_per_class_accuracy(labels, predicted, 3) == 0.75  # overall accuracy would be 0.9
    assert confusion_matrix(labels, predicted, 2).tolist() == [[8, 0], [1, 1]]


def test_validation_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(3), [10, 20, 5])
    train, val = stratified_split(labels, 0.2, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == len(labels)
    assert np.bincount(labels[val]).tolist() == [2, 4, 1]


def test_a_probe_result_is_remembered_whole_and_keyed_by_everything_it_follows_from(tmp_path):
    from library.pretrained.probe import ProbeResult, load_result, probe_key, save_result

    result = ProbeResult(10.0, {1.0: 0.5, 10.0: 0.75}, 0.8, 0.82, np.array([0.7, 0.9]), np.array([[7, 3], [1, 9]]),
                         np.array([0, 1, 1]), ("cat", "dog"))
    save_result(tmp_path / "p.npz", result)
    back = load_result(tmp_path / "p.npz")
    assert (back.c, back.val_scores, back.mean_per_class_acc, back.acc, back.classes) == \
        (10.0, {1.0: 0.5, 10.0: 0.75}, 0.8, 0.82, ("cat", "dog"))
    assert all(np.array_equal(getattr(back, k), getattr(result, k))
               for k in ("per_class_acc", "confusion", "test_predictions"))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "p.npz").read_bytes()[:100])
    assert load_result(tmp_path / "cut.npz") is None and load_result(tmp_path / "none.npz") is None  # fit again
    base = probe_key("train", "test", (1.0, 10.0), 0.2, 0)
    assert len({base, probe_key("train2", "test", (1.0, 10.0), 0.2, 0), probe_key("train", "test", (1.0,), 0.2, 0),
                probe_key("train", "test", (1.0, 10.0), 0.3, 0), probe_key("train", "test", (1.0, 10.0), 0.2, 1)}) == 5
