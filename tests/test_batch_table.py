import pytest

from ups.batch_table import auto_batch, resolve_batch
from ups.schedule import lr_at


@pytest.mark.parametrize(("gib", "batch", "accum"), [
    (15.0, 8, 4),     # T4
    (15.6, 8, 4),     # RTX 4080 16GB
    (22.5, 16, 2),    # L4 24GB
    (39.4, 32, 2),    # A100-40GB
    (79.2, 64, 1),    # A100-80GB
    (79.6, 64, 1),    # H100-80GB
    (139.8, 128, 1),  # H200
])
def test_auto_batch_table(gib, batch, accum):
    _, b, a = auto_batch(gib)
    assert (b, a) == (batch, accum)


def test_cpu_and_overrides():
    assert auto_batch(None)[1:] == (8, 1)
    assert resolve_batch("auto", "auto", 15.0) == (8, 4)
    assert resolve_batch(12, "auto", 15.0) == (12, 4)
    assert resolve_batch("auto", 3, 79.0) == (64, 3)
    with pytest.raises(ValueError):
        auto_batch(0)


def test_lr_schedule():
    kw = {"peak": 1.0, "warmup_steps": 10, "total_steps": 110}
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.5)
    assert lr_at(200, **kw) == 0.0
    assert lr_at(60, kind="cosine", **kw) == pytest.approx(0.5)
    assert lr_at(60, kind="constant", **kw) == 1.0
