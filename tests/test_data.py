"""DataModules: reproducible synthetic data, the device-resident batch path and MNIST through torchvision."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from gpu_lessons.data import (
    BlobsDataModule,
    CurveDataModule,
    DatasetMissingError,
    EpochPermutation,
    LineDataModule,
    MNISTDataModule,
    RandomFeaturesDataModule,
    ResumableDataLoader,
)
from gpu_lessons.errors import DatasetError, UserError

from .conftest import write_idx_dataset


# --- the batch path -------------------------------------------------------------------------------------------


def loader(*tensors: torch.Tensor, **sampler_options) -> ResumableDataLoader:
    """What TensorDataModule serves: a DataLoader whose sampler's items are whole batches of indices."""
    dataset = TensorDataset(*tensors)
    return ResumableDataLoader(dataset, batch_size=None, sampler=EpochPermutation(dataset, **sampler_options))


def test_permutation_is_reproducible_and_changes_every_epoch() -> None:
    first = EpochPermutation(range(100), shuffle=True, seed=7)
    again = EpochPermutation(range(100), shuffle=True, seed=7)
    assert torch.equal(first.indices(), again.indices())
    epoch0 = first.indices()
    first.set_epoch(1)
    assert not torch.equal(first.indices(), epoch0)
    assert sorted(first.indices().tolist()) == list(range(100))


def test_training_shards_are_disjoint_even_and_distributed_samplers_own() -> None:
    """The order and shards DistributedSampler(drop_last=True) gives, so runs and old checkpoints reproduce."""
    shards = [EpochPermutation(range(103), shuffle=True, seed=1, rank=r, num_replicas=4, even=True) for r in range(4)]
    for shard in shards:
        shard.set_epoch(3)
    indices = [s.indices().tolist() for s in shards]
    assert {len(i) for i in indices} == {25} == {s.num_samples for s in shards}
    flat = [i for shard in indices for i in shard]
    assert len(flat) == len(set(flat)) == 100
    for rank, shard in enumerate(indices):
        torch_sampler = DistributedSampler(range(103), num_replicas=4, rank=rank, shuffle=True, seed=1, drop_last=True)
        torch_sampler.set_epoch(3)
        assert shard == list(torch_sampler)


def test_eval_shards_cover_every_sample_exactly_once() -> None:
    shards = [EpochPermutation(range(103), rank=r, num_replicas=4, even=False) for r in range(4)]
    flat = sorted(i for s in shards for i in s.indices().tolist())
    assert flat == list(range(103))
    assert [s.num_samples for s in shards] == [len(s.indices()) for s in shards] == [26, 26, 26, 25]


def test_batches_slice_matching_rows_with_index_tensors_on_the_datas_device() -> None:
    x = torch.arange(10).float().unsqueeze(1)
    y = torch.arange(10) * 10
    batches = loader(x, y, batch_size=4, shuffle=True, seed=0)
    assert isinstance(batches, DataLoader) and len(batches) == 3
    assert all(index.device == x.device and index.dtype == torch.int64 for index in batches.sampler)
    seen = []
    for bx, by in batches:
        assert torch.equal(by, bx.squeeze(1).long() * 10)
        seen += by.tolist()
    assert sorted(seen) == list(range(0, 100, 10))
    assert len(loader(x, y, batch_size=None)) == 1


def test_fetching_a_batch_is_one_indexing_op_that_reads_nothing_back() -> None:
    """The permutation goes to the device once per epoch; each batch after that is a slice of it and one gather."""
    from .test_hot_path import HostReads

    x, y = torch.randn(100, 3), torch.arange(100)
    batches = iter(loader(x, y, batch_size=10, shuffle=True, seed=0))
    next(batches)  # draws the epoch's permutation
    with HostReads() as recorder:
        for _ in range(9):
            next(batches)
    assert recorder.reads == []


def test_a_sampler_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        EpochPermutation(range(3), batch_size=0)
    with pytest.raises(ValueError, match="passes must be a positive integer"):
        EpochPermutation(range(3), passes=0)
    with pytest.raises(ValueError, match="Invalid rank 2"):
        EpochPermutation(range(3), rank=2, num_replicas=2)


def test_lightning_keeps_the_sampler_under_ddp_and_when_predicting() -> None:
    """Lightning re-instantiates DataLoaders to inject a DistributedSampler (use_distributed_sampler, its default)
    and, when predicting, to track batch indices; neither may change the order or the shards."""
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled, _update_dataloader

    batches = loader(torch.arange(10), batch_size=3, shuffle=True, seed=5, rank=1, num_replicas=2)
    assert isinstance(batches.sampler, DistributedSampler)  # so Lightning does not wrap it in its own
    assert not _is_dataloader_shuffled(loader(torch.arange(10), batch_size=3))  # no "shuffled val loader" warning
    predicting = _update_dataloader(batches, batches.sampler, mode=RunningStage.PREDICTING)
    assert predicting.sampler is batches.sampler
    assert [b[0].tolist() for b in predicting] == [b[0].tolist() for b in batches]


def test_a_dataloader_leaves_the_global_random_state_alone() -> None:
    """Each iter() of a DataLoader draws a worker seed; from the global generator it would change dropout's masks."""
    datamodule = LineDataModule()
    datamodule.setup("fit")
    before = torch.get_rng_state()
    for _ in range(3):
        list(datamodule.train_dataloader())
    assert torch.equal(torch.get_rng_state(), before)


def test_setup_builds_the_splits_once_and_owns_them(tiny_mnist: Path) -> None:
    datamodule = LineDataModule()
    datamodule.setup("fit")
    built = datamodule.splits
    datamodule.setup("test")
    assert all(datamodule.splits[name][0] is built[name][0] for name in built)  # not built again
    assert datamodule.class_names is None and datamodule.predict_names is None
    mnist = MNISTDataModule(data_dir=tiny_mnist, download=False)
    assert mnist.class_names[7] == "digit 7" and mnist.predict_names is None


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


def test_a_failed_download_is_one_line_and_leaves_no_empty_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision reports every mirror it tried over several lines, after making data/MNIST/raw for the files."""
    from torchvision import datasets

    def offline(self, *args, **kwargs):
        os.makedirs(self.raw_folder, exist_ok=True)
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror/, got:\n"
            "<urlopen error [Errno -2] Name or service not known>\n)"
        )

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    dm = MNISTDataModule(data_dir=tmp_path / "data", download=True)
    with pytest.raises(DatasetMissingError) as error:
        dm.prepare_data()
    assert "\n" not in str(error.value)
    assert "downloading failed (<urlopen error [Errno -2] Name or service not known>)" in str(error.value)
    assert list(tmp_path.iterdir()) == []


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


def test_batches_resume_mid_epoch_at_the_next_unseen_batch() -> None:
    x = torch.arange(10)
    full = loader(x, batch_size=3, shuffle=True, seed=5)
    full.sampler.set_epoch(2)
    expected = [b[0].tolist() for b in full]
    partial = iter(full)
    next(partial), next(partial)
    state = full.state_dict()
    assert state == {"epoch": 2, "batches_trained": 2, "batch_size": 3, "passes": 1}  # the keys checkpoints hold
    resumed = loader(x, batch_size=3, shuffle=True, seed=5)
    resumed.load_state_dict(state)
    assert [b[0].tolist() for b in resumed] == expected[2:]
    assert len([b for b in resumed]) == 4  # the skip applies to the resumed epoch only


def test_a_mid_epoch_resume_with_another_batch_size_is_refused_and_an_epoch_end_one_is_not() -> None:
    resumed = loader(torch.arange(10), batch_size=4, shuffle=True, seed=5)
    with pytest.raises(UserError, match="stopped mid-epoch after 2 batches of 3; resume it with batch_size 3"):
        resumed.load_state_dict({"epoch": 2, "batches_trained": 2, "batch_size": 3})
    resumed.load_state_dict({"epoch": 2, "batches_trained": 4, "batch_size": 3})  # 4 batches of 3: the epoch's end
    assert sum(len(b[0]) for b in resumed) == 10  # a whole new epoch, nothing skipped


def test_the_loop_state_of_a_checkpoint_from_before_the_dataloader_still_resumes(tmp_path: Path) -> None:
    """tests/fixtures/regression_98c0fa1.ckpt: 2 epochs of 100 full-batch steps, saved by the old TensorBatches."""
    from .conftest import REPO

    checkpoint = torch.load(REPO / "tests/fixtures/regression_98c0fa1.ckpt", weights_only=True)
    [state] = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    datamodule = LineDataModule(steps_per_epoch=100)
    datamodule.setup("fit")
    uninterrupted = datamodule.train_dataloader()
    uninterrupted.sampler.set_epoch(2)
    resumed = datamodule.train_dataloader()
    resumed.load_state_dict(state)  # the end of epoch 1: Lightning then starts epoch 2
    resumed.sampler.set_epoch(2)
    assert [b[0].tolist() for b in resumed] == [b[0].tolist() for b in uninterrupted]


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


def test_a_plain_loop_over_the_mnist_loaders_normalises_with_preprocess_batch(tiny_mnist: Path) -> None:
    """The loaders yield the stored uint8 images (Lightning normalises them in on_after_batch_transfer); a plain
    PyTorch loop does the same with preprocess_batch, and gets what the lesson's steps get."""
    from gpu_lessons.data import preprocess_batch
    from gpu_lessons.models import CNN

    dm = MNISTDataModule(data_dir=tiny_mnist, batch_size=64, val_size=100, download=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].dtype == torch.uint8
    images, labels = preprocess_batch(batch)
    assert images.dtype == torch.float32 and images.shape == (64, 1, 28, 28)
    assert torch.equal(images, dm.on_after_batch_transfer(batch, 0)[0])
    assert CNN()(images).shape == (64, 10)
