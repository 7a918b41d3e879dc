"""fit-kmeans: raw features clustered as the recipe does, deterministic fits, the feature model
and waveform of the trainer, bad settings named."""


import numpy as np

from tests.stages.conftest import fit_and_label


def test_default_fit_and_assign_cluster_the_raw_features(prepared, corpus):
    """fairseq's learn_kmeans.py / dump_km_label.py cluster the features as they are: the
    centroids live in the raw MFCC space and each label is the nearest raw centroid."""
    out, params = prepared
    fit_and_label(out, params, corpus, "raw")
    with np.load(out / "raw" / "kmeans" / "model.npz", allow_pickle=False) as z:
        centroids, mean, std = z["centroids"], z["mean"], z["std"]
    np.testing.assert_array_equal(mean, np.zeros(39, np.float32))
    np.testing.assert_array_equal(std, np.ones(39, np.float32))
    from ups.feature_store import list_tars
    from ups.kmeans import assign

    tars = list_tars(out / "features", "train")
    raw = np.concatenate([np.asarray(t.mfcc()) for t in tars])
    # the centroids are means of raw frames: inside the raw data's range, per dimension
    assert np.all(centroids >= raw.min(axis=0) - 1e-3) and np.all(centroids <= raw.max(axis=0) + 1e-3)
    assert abs(float(raw[:, 0].mean())) > 1.0  # c0 is far from 0: z-scored centroids would not fit it
    assert np.allclose(centroids[:, 0].mean(), raw[:, 0].mean(), rtol=0.5)
    want = np.concatenate([assign(np.asarray(t.mfcc()), centroids)[0] for t in tars])
    ids = np.load(out / "raw/labels/train/chunk_ids.npy")
    labels = np.load(out / "raw/labels/train/labels.npy")
    by_tar = np.concatenate([t.chunk_ids for t in tars])
    starts = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(t.offsets) for t in tars]))])
    pos = {int(c): i for i, c in enumerate(by_tar)}
    got = np.concatenate([want[starts[pos[int(c)]]:starts[pos[int(c)] + 1]] for c in ids])
    np.testing.assert_array_equal(labels, got)


def test_fit_is_deterministic(prepared, corpus):
    out, params = prepared
    fit_and_label(out, params, corpus, "a")
    fit_and_label(out, params, corpus, "b")
    for rel in ("kmeans/model.npz", "labels/train/labels.npy", "labels/valid/labels.npy"):
        assert (out / "a" / rel).read_bytes() == (out / "b" / rel).read_bytes()
