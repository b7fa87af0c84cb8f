"""DataModules: reproducible synthetic data, the device-resident batch path and MNIST through torchvision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpu_lessons.data import (
    BlobsDataModule,
    CurveDataModule,
    DatasetMissingError,
    EpochPermutation,
    LineDataModule,
    MNISTDataModule,
    RandomFeaturesDataModule,
    TensorBatches,
)
from gpu_lessons.errors import DatasetError, UserError

from .conftest import write_idx_dataset


# --- the batch path -------------------------------------------------------------------------------------------


def test_permutation_is_reproducible_and_changes_every_epoch() -> None:
    first = EpochPermutation(100, shuffle=True, seed=7)
    again = EpochPermutation(100, shuffle=True, seed=7)
    assert torch.equal(first.indices(), again.indices())
    epoch0 = first.indices()
    first.set_epoch(1)
    assert not torch.equal(first.indices(), epoch0)
    assert sorted(first.indices().tolist()) == list(range(100))


def test_shards_are_disjoint_and_even_for_training() -> None:
    shards = [EpochPermutation(103, shuffle=True, seed=1, rank=r, world_size=4, even=True) for r in range(4)]
    indices = [s.indices().tolist() for s in shards]
    assert {len(i) for i in indices} == {25} == {len(s) for s in shards}
    flat = [i for shard in indices for i in shard]
    assert len(flat) == len(set(flat)) == 100


def test_eval_shards_cover_every_sample_exactly_once() -> None:
    shards = [EpochPermutation(103, shuffle=False, rank=r, world_size=4, even=False) for r in range(4)]
    flat = sorted(i for s in shards for i in s.indices().tolist())
    assert flat == list(range(103))
    assert [len(s) for s in shards] == [len(s.indices()) for s in shards]


def test_tensor_batches_slice_matching_rows() -> None:
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10) * 10
    batches = TensorBatches(x, y, batch_size=4, sampler=EpochPermutation(10, shuffle=True, seed=0))
    assert len(batches) == 3
    seen = []
    for bx, by in batches:
        assert torch.equal(by, bx.squeeze(1).long() * 10)
        seen += by.tolist()
    assert sorted(seen) == list(range(0, 100, 10))
    assert len(TensorBatches(x, y, batch_size=4, drop_last=True)) == 2
    assert len(TensorBatches(x, y, batch_size=None)) == 1


def test_tensor_batches_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="equal length"):
        TensorBatches(torch.zeros(3), torch.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TensorBatches(torch.zeros(3), batch_size=0)


# --- synthetic data ---------------------------------------------------------------------------------------------


def test_line_is_y_equals_2x_plus_1_with_the_course_points() -> None:
    dm = LineDataModule()
    dm.setup()
    x, y = dm.splits["train"]
    assert x.squeeze(1).tolist() == [1, 2, 3, 4, 5]
    assert y.squeeze(1).tolist() == [3, 5, 7, 9, 11]
    assert dm.splits["predict"][0].squeeze(1).tolist() == [6, 7, 10]
    assert dm.splits["val"][1].squeeze(1).tolist() == [13, 15, 21]


def test_blobs_reproduce_the_course_data_exactly() -> None:
    torch.manual_seed(42)
    class0 = torch.randn(50, 2) + 2.0
    class1 = torch.randn(50, 2) + 6.0
    dm = BlobsDataModule(seed=42)
    dm.setup()
    x, y = dm.splits["train"]
    assert torch.equal(x, torch.cat([class0, class1]))
    assert y.tolist() == [0.0] * 50 + [1.0] * 50
    assert not torch.equal(dm.splits["val"][0], x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CurveDataModule(num_points=11),
        lambda: RandomFeaturesDataModule(labels="noise", num_train=20, seed=3),
        lambda: RandomFeaturesDataModule(labels="pattern", num_train=200, seed=3),
        lambda: LineDataModule(noise=0.1, seed=3),
    ],
)
def test_synthetic_data_is_reproducible_from_the_seed(make) -> None:
    a, b = make(), make()
    a.setup()
    b.setup()
    for split in a.splits:
        for ta, tb in zip(a.splits[split], b.splits[split]):
            assert torch.equal(ta, tb)


def test_pattern_labels_follow_the_rule_and_noise_labels_do_not() -> None:
    pattern = RandomFeaturesDataModule(labels="pattern", num_train=1000)
    noise = RandomFeaturesDataModule(labels="noise", num_train=1000)
    pattern.setup()
    noise.setup()
    x, y = pattern.splits["train"]
    assert torch.equal(y, (x.sum(1) > 0).float())
    x, y = noise.splits["train"]
    agreement = (y == (x.sum(1) > 0).float()).float().mean().item()
    assert 0.4 < agreement < 0.6


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LineDataModule(batch_size=0), "batch_size must be a positive integer"),
        (lambda: LineDataModule(noise=-1.0), "noise must be >= 0"),
        (lambda: CurveDataModule(x_min=1.0, x_max=0.0), "x_min < x_max"),
        (lambda: RandomFeaturesDataModule(labels="random"), "labels must be"),
        (lambda: MNISTDataModule(dataset="cifar"), "dataset must be one of"),
        (lambda: MNISTDataModule(val_size=-1), "val_size must be >= 0"),
    ],
)
def test_bad_data_arguments_name_the_problem(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# --- MNIST through torchvision -----------------------------------------------------------------------------------


def test_mnist_loads_idx_files_through_torchvision(tiny_mnist: Path) -> None:
    dm = MNISTDataModule(data_dir=tiny_mnist, batch_size=64, eval_batch_size=50, val_size=100, download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.splits["train"][0].dtype == torch.uint8
    assert [len(dm.splits[s][0]) for s in ("train", "val", "test")] == [500, 100, 200]
    train = dm.train_dataloader()
    assert len(train) == 8
    images, labels = dm.on_after_batch_transfer(next(iter(train)), 0)
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (64,)
    # Normalised with MNIST's statistics: 0 maps to -mean/std, 255 to (1-mean)/std.
    assert images.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-4)
    assert images.max().item() == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-4)


def test_mnist_split_is_seeded_and_disjoint(tiny_mnist: Path) -> None:
    def split(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        dm = MNISTDataModule(data_dir=tiny_mnist, val_size=100, seed=seed, download=False)
        return dm._split_indices(600)

    train, val = split(1)
    assert torch.equal(split(1)[1], val)
    assert not torch.equal(split(2)[1], val)
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == 600


def test_tensor_and_torchvision_paths_give_the_same_pixels(tiny_mnist: Path) -> None:
    kwargs = dict(data_dir=tiny_mnist, eval_batch_size=200, val_size=100, download=False)
    fast, course = MNISTDataModule(**kwargs), MNISTDataModule(loader="torchvision", **kwargs)
    fast.setup("test")
    course.setup("test")
    fast_images, fast_labels = fast.on_after_batch_transfer(next(iter(fast.test_dataloader())), 0)
    course_images, course_labels = course.on_after_batch_transfer(next(iter(course.test_dataloader())), 0)
    torch.testing.assert_close(fast_images, course_images)
    assert torch.equal(fast_labels, course_labels)


def test_fashion_mnist_reads_its_own_folder(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, num_train=50, num_test=20, folder="FashionMNIST")
    dm = MNISTDataModule(data_dir=tmp_path, dataset="fashion_mnist", val_size=10, download=False)
    dm.setup()
    assert len(dm.splits["test"][0]) == 20
    assert dm.mean == pytest.approx(0.2860)


def test_missing_mnist_offline_is_one_clear_error(tmp_path: Path) -> None:
    dm = MNISTDataModule(data_dir=tmp_path / "nowhere", download=False)
    with pytest.raises(DatasetMissingError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert str((tmp_path / "nowhere" / "MNIST" / "raw").resolve()) in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message
    assert "connect to the internet" in message and "data_dir/MNIST/raw" in message


def test_failed_download_is_the_same_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision import datasets

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    dm = MNISTDataModule(data_dir=tmp_path, download=True)
    with pytest.raises(DatasetMissingError, match="downloading failed .*name resolution.*t10k-labels-idx1-ubyte"):
        dm.prepare_data()


def test_gz_archives_are_unpacked_offline(tmp_path: Path) -> None:
    """Archives such as Debian's dataset-fashion-mnist (re-compressed, so torchvision's checksums reject them)."""
    import gzip

    raw = write_idx_dataset(tmp_path, num_train=50, num_test=20, folder="FashionMNIST") / "FashionMNIST" / "raw"
    for idx in list(raw.iterdir()):
        (raw / f"{idx.name}.gz").write_bytes(gzip.compress(idx.read_bytes()))
        idx.unlink()
    dm = MNISTDataModule(data_dir=tmp_path, dataset="fashion_mnist", val_size=10, download=False)
    dm.prepare_data()
    dm.setup()
    assert len(dm.splits["train"][0]) == 40 and len(dm.splits["test"][0]) == 20


def test_tensor_batches_resume_mid_epoch_at_the_next_unseen_batch() -> None:
    x = torch.arange(10)
    full = TensorBatches(x, batch_size=3, sampler=EpochPermutation(10, shuffle=True, seed=5))
    full.sampler.set_epoch(2)
    expected = [b[0].tolist() for b in full]
    partial = iter(full)
    next(partial), next(partial)
    state = full.state_dict()
    assert state == {"epoch": 2, "batches_trained": 2, "batch_size": 3, "passes": 1}
    resumed = TensorBatches(x, batch_size=3, sampler=EpochPermutation(10, shuffle=True, seed=5))
    resumed.load_state_dict(state)
    assert [b[0].tolist() for b in resumed] == expected[2:]
    assert len([b for b in resumed]) == 4  # the skip applies to the resumed epoch only


def test_a_mid_epoch_resume_with_another_batch_size_is_refused_and_an_epoch_end_one_is_not() -> None:
    x = torch.arange(10)
    resumed = TensorBatches(x, batch_size=4, sampler=EpochPermutation(10, shuffle=True, seed=5))
    with pytest.raises(UserError, match="stopped mid-epoch after 2 batches of 3; resume it with batch_size 3"):
        resumed.load_state_dict({"epoch": 2, "batches_trained": 2, "batch_size": 3})
    resumed.load_state_dict({"epoch": 2, "batches_trained": 4, "batch_size": 3})  # 4 batches of 3: the epoch's end
    assert sum(len(b[0]) for b in resumed) == 10  # a whole new epoch, nothing skipped


def _damage(raw: Path, case: str) -> None:
    import gzip
    import struct

    images, labels = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    if case == "truncated images":
        images.write_bytes(images.read_bytes()[:1000])
    elif case == "empty images":
        images.write_bytes(b"")
    elif case == "wrong magic number":
        labels.write_bytes(b"\0\0\0\0" + labels.read_bytes()[4:])
    elif case == "fewer labels than images":
        labels.write_bytes(struct.pack(">II", 0x801, 10) + labels.read_bytes()[8:18])
    elif case == "images that are not 28x28":
        images.write_bytes(struct.pack(">IIII", 0x803, 60, 14, 56) + images.read_bytes()[16:])
    elif case == "a label outside 0..9":
        data = bytearray(labels.read_bytes())
        data[10] = 77
        labels.write_bytes(bytes(data))
    elif case in ("corrupt .gz", "truncated .gz"):
        packed = gzip.compress(images.read_bytes())
        images.unlink()
        (raw / "train-images-idx3-ubyte.gz").write_bytes(
            b"\x1f\x8bnot gzip" if case == "corrupt .gz" else packed[: len(packed) // 2]
        )


DAMAGED_MNIST = {
    "truncated images": "cannot be read (RuntimeError",
    "empty images": "cannot be read (ValueError",
    "wrong magic number": "cannot be read (AssertionError",
    "fewer labels than images": "cannot be read (60 images but 10 labels)",
    "images that are not 28x28": "cannot be read (its images are [14, 56], not 28×28)",
    "a label outside 0..9": "cannot be read (labels outside 0..9 (0..77))",
    "corrupt .gz": "train-images-idx3-ubyte.gz is damaged",
    "truncated .gz": "train-images-idx3-ubyte.gz is damaged (EOFError",
}


@pytest.mark.parametrize("case", list(DAMAGED_MNIST))
def test_damaged_mnist_files_are_one_clear_error_naming_them(case: str, tmp_path: Path) -> None:
    root = write_idx_dataset(tmp_path, num_train=60, num_test=20)
    _damage(root / "MNIST" / "raw", case)
    before = sorted(p.name for p in (root / "MNIST" / "raw").iterdir())
    datamodule = MNISTDataModule(data_dir=root, val_size=10, download=False)
    with pytest.raises(DatasetError) as error:
        datamodule.prepare_data()
        datamodule.setup("fit")
    assert DAMAGED_MNIST[case] in str(error.value) and "\n" not in str(error.value)
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == before  # no half-unpacked file left
