import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from ups.config import KmeansConfig
from ups.kmeans import (
    assign,
    entropy_bits,
    fit_kmeans,
    fit_normaliser,
    joint_counts,
    language_figures,
    mutual_information_from_counts,
    sample_frames,
    usage,
    usage_figures,
)


def test_sample_frames_is_uniform_without_replacement_and_seeded():
    counts = np.array([5, 0, 100, 7])
    picks = sample_frames(counts, 50, np.random.default_rng(3))
    assert [len(p) for p in picks] and sum(len(p) for p in picks) == 50
    for c, p in zip(counts, picks, strict=True):
        assert np.all(np.diff(p) > 0) and (len(p) == 0 or (p[0] >= 0 and p[-1] < c))
    again = sample_frames(counts, 50, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(picks, again, strict=True))
    everything = sample_frames(counts, 1000, np.random.default_rng(3))
    assert [len(p) for p in everything] == [5, 0, 100, 7]


def test_assign_matches_brute_force_and_reports_inertia():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1001, 39)).astype(np.float32)
    c = rng.standard_normal((17, 39)).astype(np.float32)
    labels, inertia = assign(x, c)
    d = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, d.argmin(1))
    assert labels.dtype == np.int16
    assert inertia == pytest.approx(d.min(1).sum(), rel=1e-4)


def test_torch_assigner_normalises_and_labels_as_numpy_does():
    import torch

    from ups.kmeans import TorchAssigner

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3001, 48)) * 3 + 1).astype(np.float32)
    c = rng.standard_normal((23, 48)).astype(np.float32)
    norm = fit_normaliser(x)
    want, want_inertia = assign(norm.apply(x), c)
    got, inertia = TorchAssigner(norm, c, "cpu")(torch.from_numpy(x), block_frames=1000)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, want)
    assert inertia == pytest.approx(want_inertia, rel=1e-4)


def test_kmeans_plusplus_runs_pick_distinct_data_points_spread_over_the_clusters():
    from ups.kmeans import kmeans_plusplus_runs

    rng = np.random.default_rng(2)
    centres = rng.standard_normal((10, 16)).astype(np.float32) * 20
    x = (centres[rng.integers(0, 10, 2000)] + rng.standard_normal((2000, 16))).astype(np.float32)
    runs = kmeans_plusplus_runs(x, 10, 4, np.random.default_rng(0))
    assert runs.shape == (4, 10, 16) and runs.dtype == np.float32
    rows = {r.tobytes() for r in x}
    for run in runs:
        assert all(c.tobytes() in rows for c in run)  # every centre is a data point
        nearest = ((run[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        assert len(set(nearest.tolist())) >= 9  # D^2 sampling covers (almost) every true cluster
    assert not np.array_equal(runs[0], runs[1])  # independent runs
    again = kmeans_plusplus_runs(x, 10, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(runs, again)


def test_fit_finds_well_separated_clusters():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((4, 3)) * 20
    x = np.concatenate([c + rng.standard_normal((500, 3)) for c in centres]).astype(np.float32)
    cfg = KmeansConfig(n_clusters=4, batch_size=256, n_init=3, seed=0)
    km = fit_kmeans(x, cfg)
    labels, _ = assign(x, km.centroids)
    assert sorted(np.bincount(labels)) == [500, 500, 500, 500]


def test_fit_refuses_fewer_frames_than_clusters():
    with pytest.raises(ValueError, match="sample_hours"):
        fit_kmeans(np.zeros((3, 2), np.float32), KmeansConfig(n_clusters=4))


def test_blocked_normaliser_equals_numpy_and_applies_in_place():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((1000, 7)) * [1, 2, 3, 4, 5, 6, 0] + 100).astype(np.float32)
    norm = fit_normaliser(x, block=64)
    np.testing.assert_allclose(norm.mean, x.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.std, np.maximum(x.astype(np.float64).std(0), 1e-5), rtol=1e-5)
    want = norm.apply(x)
    y = x.copy()
    assert norm.apply_inplace(y, block=100) is y
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_normaliser_gives_zero_mean_unit_std_and_floors_constant_dims():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(5, 3, (1000, 2)), np.ones((1000, 1))], axis=1).astype(np.float32)
    n = fit_normaliser(x)
    y = n.apply(x)
    np.testing.assert_allclose(y[:, :2].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y[:, :2].std(0), 1, atol=1e-4)
    assert np.isfinite(y).all()


def test_entropy_and_mutual_information_known_answers():
    assert entropy_bits(np.array([1, 1, 1, 1])) == pytest.approx(2.0)
    assert entropy_bits(np.array([5, 0])) == 0.0
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    same = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    assert mutual_information_from_counts(joint_counts(labels, same, 4, 2)) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 2000), rng.integers(0, 3, 2000)
    mi = mutual_information_from_counts(joint_counts(a, b, 5, 3))
    assert mi == pytest.approx(mutual_info_score(a, b) / np.log(2))
    assert list(usage(np.array([0, 2, 2], np.int16), 4)) == [1, 0, 2, 0]


def test_joint_counts_leave_out_frames_of_unknown_group():
    joint = joint_counts(np.array([0, 1, 1, 2], np.int16), np.array([0, 1, -1, 1]), 3, 2)
    assert joint.tolist() == [[1, 0], [0, 1], [0, 1]]


def test_usage_and_language_figures_known_answers():
    usage_of = usage_figures(np.array([2, 2, 0, 0]), 4)
    assert usage_of == {"usage_entropy_bits": 1.0, "usage_entropy_normalised": 0.5, "empty_clusters": 2}
    # two clusters, each all one language: the clusters tell the language exactly (1 bit of 1)
    assert language_figures(np.array([[5, 0], [0, 5]])) == {"mi_cluster_language_bits": 1.0,
                                                            "language_entropy_bits": 1.0,
                                                            "mi_over_language_entropy": 1.0}
    one = language_figures(np.array([[3], [4]]))  # one language: nothing to tell
    assert set(one.values()) == {0.0} and len(one) == 3


def test_fit_matches_sklearn_minibatch_quality_and_stops_early():
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(4)
    centres = rng.standard_normal((30, 8)) * 3
    x = (centres[rng.integers(0, 30, 40000)] + rng.standard_normal((40000, 8))).astype(np.float32)
    held = (centres[rng.integers(0, 30, 5000)] + rng.standard_normal((5000, 8))).astype(np.float32)
    cfg = KmeansConfig(n_clusters=30, batch_size=500, n_init=3, max_no_improvement=20, seed=0)
    km = fit_kmeans(x, cfg)
    ref = MiniBatchKMeans(n_clusters=30, batch_size=500, n_init=3, max_no_improvement=20, tol=0.0,
                          reassignment_ratio=0.0, random_state=0).fit(x)
    ours = assign(held, km.centroids)[1]
    theirs = assign(held, ref.cluster_centers_.astype(np.float32))[1]
    assert ours <= 1.05 * theirs
    assert km.converged and km.n_steps < cfg.max_iter * len(x) // cfg.batch_size
    assert len(km.init_inertias) == 3 and km.centroids.dtype == np.float32
    again = fit_kmeans(x, cfg)
    np.testing.assert_array_equal(km.centroids, again.centroids)
