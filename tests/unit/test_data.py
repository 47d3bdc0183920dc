"""Channel readers: IDX recognised by content, image folders, pairing, splitting, sharding (numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devkit.idx import mnist_arrays, write_idx
from mxnet_byoc.train import data
from mxnet_byoc.train.data import DataError


def digits(n: int, size: int = 28, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic images whose every pixel equals 10 * label, so a test can tell which label came with which."""
    labels = np.random.RandomState(seed).randint(0, classes, n).astype(np.uint8)
    images = np.repeat(labels * 10, size * size).reshape(n, size, size).astype(np.uint8)
    return images, labels


def assert_paired(ds: data.Dataset) -> None:
    assert np.array_equal(ds.images[:, 0, 0, 0], ds.labels * 10)


# -- IDX ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_recognised_by_content_under_any_name(tmp_path, gz):
    images, labels = digits(50)
    write_idx(tmp_path / "ch" / "pixels.dat", images, gz)
    write_idx(tmp_path / "ch" / "answers", labels, gz)
    ds = data.read_channel(tmp_path / "ch")
    assert ds.images.shape == (50, 1, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and len(ds) == 50
    assert ds.input_shape == (1, 28, 28)
    assert ds.classes == list(range(int(labels.max()) + 1))
    assert np.array_equal(ds.labels, labels)
    assert_paired(ds)


def test_gz_and_raw_mixed_in_one_channel(tmp_path):
    images, labels = digits(40)
    write_idx(tmp_path / "ch" / "train-images-idx3-ubyte.gz", images, gz=True)
    write_idx(tmp_path / "ch" / "train-labels-idx1-ubyte", labels, gz=False)
    ds = data.read_channel(tmp_path / "ch")
    assert len(ds) == 40
    assert_paired(ds)


def test_images_pair_with_labels_by_count_not_by_name(tmp_path):
    a_images, a_labels = digits(30, seed=1)
    b_images, b_labels = digits(20, seed=2)
    # Names that sort the other way round from their partners.
    write_idx(tmp_path / "ch" / "a-images", a_images)
    write_idx(tmp_path / "ch" / "b-images", b_images)
    write_idx(tmp_path / "ch" / "a-labels", b_labels)
    write_idx(tmp_path / "ch" / "b-labels", a_labels)
    ds = data.read_channel(tmp_path / "ch")
    assert len(ds) == 50
    assert_paired(ds)


def test_notes_beside_the_data_are_ignored(tmp_path):
    images, labels = digits(10)
    write_idx(tmp_path / "ch" / "x", images)
    write_idx(tmp_path / "ch" / "y", labels)
    (tmp_path / "ch" / "README.md").write_text("# MNIST\n")
    (tmp_path / "ch" / "SHA256SUMS").write_text("abc  x\n")
    (tmp_path / "ch" / ".hidden").write_bytes(b"junk")
    assert len(data.read_channel(tmp_path / "ch")) == 10


def test_real_mnist_under_other_names(tmp_path, mnist_dir):
    channel = tmp_path / "test"
    channel.mkdir()
    (channel / "images.gz").symlink_to(mnist_dir / "t10k-images-idx3-ubyte.gz")
    (channel / "labels.gz").symlink_to(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    ds = data.read_channel(channel)
    assert ds.images.shape == (10000, 1, 28, 28)
    assert ds.classes == list(range(10))
    assert ds.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert ds.images.max() == 255 and ds.images.min() == 0


def test_real_mnist_slice_uncompressed(tmp_path, mnist_dir):
    images, labels = mnist_arrays(mnist_dir, "test", 500)
    write_idx(tmp_path / "ch" / "0", images)
    write_idx(tmp_path / "ch" / "1", labels)
    ds = data.read_channel(tmp_path / "ch")
    assert np.array_equal(ds.images[:, 0], images) and np.array_equal(ds.labels, labels)


@pytest.mark.parametrize("size", [14, 32])
def test_other_image_size_gives_its_input_shape(tmp_path, size):
    images, labels = digits(12, size=size)
    write_idx(tmp_path / "ch" / "i", images)
    write_idx(tmp_path / "ch" / "l", labels)
    ds = data.read_channel(tmp_path / "ch")
    assert ds.input_shape == (1, size, size)
    assert_paired(ds)


def test_channels_last_colour_idx_becomes_nchw(tmp_path):
    images = np.arange(6 * 8 * 8 * 3, dtype=np.uint32).reshape(6, 8, 8, 3) % 256
    images = images.astype(np.uint8)
    write_idx(tmp_path / "ch" / "i", images)
    write_idx(tmp_path / "ch" / "l", np.arange(6, dtype=np.uint8) % 3)
    ds = data.read_channel(tmp_path / "ch")
    assert ds.input_shape == (3, 8, 8)
    assert np.array_equal(ds.images, images.transpose(0, 3, 1, 2))
    assert ds.classes == [0, 1, 2]


def test_float_idx_in_unit_range_is_scaled_to_bytes(tmp_path):
    images = np.full((4, 5, 5), 0.5, dtype=">f4")
    images[0] = 1.0
    write_idx(tmp_path / "ch" / "i", images)
    write_idx(tmp_path / "ch" / "l", np.array([0, 1, 2, 3], dtype=">i4"))
    ds = data.read_channel(tmp_path / "ch")
    assert ds.images.dtype == np.uint8
    assert ds.images[0].max() == 255 and ds.images[1].max() == 128


def test_classes_come_from_the_labels(tmp_path):
    images, labels = digits(60, classes=4)
    write_idx(tmp_path / "ch" / "i", images)
    write_idx(tmp_path / "ch" / "l", labels)
    assert data.read_channel(tmp_path / "ch").classes == [0, 1, 2, 3]


def _channel(tmp_path: Path, n_images=20, n_labels=20, gz=False) -> Path:
    images, _ = digits(n_images)
    _, labels = digits(n_labels)
    write_idx(tmp_path / "ch" / "imgs", images, gz)
    write_idx(tmp_path / "ch" / "lbls", labels, gz)
    return tmp_path / "ch"


# file -> (gzip-compressed channel, file changed, change, the reason's pattern)
CORRUPT_FILES = {
    "bad magic": (False, "imgs", lambda raw: b"\x89PNG" + raw[4:],
                  r"imgs: not an IDX file \(bad magic number 89504e47"),
    "unknown type code": (False, "lbls", lambda raw: b"\x00\x00\x07\x03" + raw[4:], "lbls: not an IDX file"),
    "no dimensions": (False, "lbls", lambda raw: b"\x00\x00\x08\x00" + raw[4:], "lbls: not an IDX file"),
    "second byte not zero": (False, "lbls", lambda raw: b"\x00\x01\x08\x03" + raw[4:], "lbls: not an IDX file"),
    "empty file": (False, "zero", lambda raw: b"", "zero: not an IDX file .*empty"),
    "truncated data": (False, "imgs", lambda raw: raw[:-100],
                       r"imgs: IDX data has \d+ bytes but its header \(20, 28, 28\) needs 15680"),
    "trailing garbage": (False, "lbls", lambda raw: raw + b"\x00\x01", "lbls: .*truncated or corrupt"),
    "truncated header": (False, "imgs", lambda raw: b"\x00\x00\x08\x03\x00\x00\x00\x14", "imgs: truncated IDX header"),
    "truncated gzip": (True, "imgs", lambda raw: raw[: len(raw) // 2], "imgs: gzip data is corrupt or truncated"),
}


@pytest.mark.parametrize("case", list(CORRUPT_FILES))
def test_a_corrupt_file_is_named_with_what_is_wrong(tmp_path, case):
    gz, name, change, reason = CORRUPT_FILES[case]
    channel = _channel(tmp_path, gz=gz)
    path = channel / name
    path.write_bytes(change(path.read_bytes() if path.exists() else b""))
    with pytest.raises(DataError, match=reason):
        data.read_channel(channel)


def test_image_and_label_counts_differ(tmp_path):
    channel = _channel(tmp_path, n_images=20, n_labels=19)
    with pytest.raises(DataError) as e:
        data.read_channel(channel)
    message = str(e.value)
    assert "'ch'" in message and "imgs holds 20 images" in message and "lbls: 19" in message


def test_extra_label_file_without_images(tmp_path):
    channel = _channel(tmp_path)
    write_idx(channel / "more-labels", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match="more-labels has no image file with as many records"):
        data.read_channel(channel)


def test_labels_without_images_and_images_without_labels(tmp_path):
    images, labels = digits(5)
    write_idx(tmp_path / "a" / "l", labels)
    with pytest.raises(DataError, match="no IDX image file"):
        data.read_channel(tmp_path / "a")
    write_idx(tmp_path / "b" / "i", images)
    with pytest.raises(DataError, match="no IDX label file"):
        data.read_channel(tmp_path / "b")


def test_negative_labels_are_refused(tmp_path):
    images, _ = digits(3)
    write_idx(tmp_path / "ch" / "i", images)
    write_idx(tmp_path / "ch" / "l", np.array([0, -1, 2], dtype=np.int8))
    with pytest.raises(DataError, match="l: labels must be non-negative integers"):
        data.read_channel(tmp_path / "ch")


def test_image_files_of_different_sizes_in_one_channel(tmp_path):
    a, la = digits(5, size=28)
    b, lb = digits(6, size=14)
    for name, array in {"a": a, "al": la, "b": b, "bl": lb}.items():
        write_idx(tmp_path / "ch" / name, array)
    with pytest.raises(DataError, match="differ in shape"):
        data.read_channel(tmp_path / "ch")


def test_empty_channel(tmp_path):
    (tmp_path / "training").mkdir()
    with pytest.raises(DataError, match="channel 'training' is empty: expected IDX files"):
        data.read_channel(tmp_path / "training")


def test_missing_channel(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.read_channel(tmp_path / "nowhere")


def test_test_channel_keeps_the_training_classes(tmp_path):
    images, labels = digits(10, classes=3)
    write_idx(tmp_path / "ch" / "i", images)
    write_idx(tmp_path / "ch" / "l", labels)
    ds = data.read_channel(tmp_path / "ch", classes=list(range(10)))
    assert ds.classes == list(range(10))
    with pytest.raises(DataError, match="label 2 is outside the training data's 2 classes"):
        data.read_channel(tmp_path / "ch", classes=[0, 1])


# -- image folders --------------------------------------------------------------------------------------

def write_png(path: Path, value: int, size=(14, 14), mode="L", fmt="PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path, fmt)


def test_image_folders_label_per_folder(tmp_path):
    channel = tmp_path / "training"
    for label in ("0", "2", "10"):
        for i in range(3):
            write_png(channel / label / f"img{i}.png", 10 * int(label))
    write_png(channel / "10" / "extra.jpg", 100, mode="RGB", fmt="JPEG")
    (channel / "2" / "notes.txt").write_text("not an image")
    ds = data.read_channel(channel)
    assert ds.classes == [0, 2, 10]  # numeric folder names in numeric order
    assert ds.input_shape == (1, 14, 14)
    assert len(ds) == 10
    labels = [ds.classes[i] for i in ds.labels]
    assert sorted(labels) == [0, 0, 0, 2, 2, 2, 10, 10, 10, 10]
    for img, label in zip(ds.images, labels):
        assert abs(int(img[0, 0, 0]) - 10 * label) <= 2  # JPEG is lossy


def test_image_folders_with_names_and_other_sizes(tmp_path):
    channel = tmp_path / "training"
    write_png(channel / "cat" / "a.png", 50, size=(32, 32))
    write_png(channel / "cat" / "b.png", 50, size=(32, 32))
    write_png(channel / "dog" / "c.png", 200, size=(16, 16))  # resized to the most common size
    ds = data.read_channel(channel)
    assert ds.classes == ["cat", "dog"]
    assert ds.input_shape == (1, 32, 32)
    assert ds.labels.tolist() == [0, 0, 1]


def test_image_folder_test_channel_maps_to_training_classes(tmp_path):
    write_png(tmp_path / "test" / "7" / "a.png", 70)
    write_png(tmp_path / "test" / "3" / "b.png", 30)
    ds = data.read_channel(tmp_path / "test", classes=[3, 5, 7])
    assert [ds.classes[i] for i in ds.labels] == [3, 7]
    with pytest.raises(DataError, match=r"classes \['3'\] do not occur in the training channel"):
        data.read_channel(tmp_path / "test", classes=[5, 7])


def test_unreadable_image_in_a_folder(tmp_path):
    write_png(tmp_path / "training" / "1" / "ok.png", 1)
    (tmp_path / "training" / "1" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="1/broken.png is not a readable image"):
        data.read_channel(tmp_path / "training")


def test_folders_without_images(tmp_path):
    (tmp_path / "training" / "0").mkdir(parents=True)
    with pytest.raises(DataError, match="no .png/.jpg images"):
        data.read_channel(tmp_path / "training")


# -- split and shard ------------------------------------------------------------------------------------

def _dataset(n: int) -> data.Dataset:
    images = np.arange(n, dtype=np.uint32).astype(np.uint8).reshape(n, 1, 1, 1)
    return data.Dataset(images, np.arange(n, dtype=np.int32), list(range(n)))


@pytest.mark.parametrize("fraction, n_val", [(0.1, 100), (0.25, 250), (0.5, 500), (0.001, 1)])
def test_split_holds_out_the_fraction(fraction, n_val):
    train, val = data.split(_dataset(1000), fraction, seed=42)
    assert len(val) == n_val and len(train) == 1000 - n_val
    assert set(train.labels).isdisjoint(val.labels)
    assert set(train.labels) | set(val.labels) == set(range(1000))
    assert np.array_equal(train.images[:, 0, 0, 0], train.labels.astype(np.uint8))
    assert train.classes == val.classes == list(range(1000))


def test_split_is_seeded():
    a = data.split(_dataset(200), 0.1, seed=1)[1].labels
    b = data.split(_dataset(200), 0.1, seed=1)[1].labels
    c = data.split(_dataset(200), 0.1, seed=2)[1].labels
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(np.sort(a), np.arange(20))  # drawn at random, not the first records


def test_split_that_leaves_nothing_to_train_on():
    with pytest.raises(DataError, match="cannot hold out"):
        data.split(_dataset(1), 0.5, seed=0)


@pytest.mark.parametrize("count", [2, 3, 4])
def test_shards_cover_the_data_once(count):
    ds = _dataset(103)
    parts = [data.shard(ds, rank, count, seed=7) for rank in range(count)]
    seen = np.concatenate([p.labels for p in parts])
    assert sorted(seen.tolist()) == list(range(103))
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    for p in parts:
        assert p.classes == ds.classes
        assert np.array_equal(p.images[:, 0, 0, 0], p.labels.astype(np.uint8))


def test_shards_are_drawn_at_random_not_by_position():
    # MNIST's files are ordered by writer: a contiguous or strided shard would not be a fair sample.
    ds = _dataset(1000)
    a = data.shard(ds, 0, 2, seed=1).labels
    assert not np.array_equal(a, np.arange(0, 1000, 2)) and not np.array_equal(a, np.arange(500))
    assert np.array_equal(a, data.shard(ds, 0, 2, seed=1).labels)  # every host computes the same split
    assert not np.array_equal(a, data.shard(ds, 0, 2, seed=2).labels)


def test_one_shard_is_everything():
    ds = _dataset(10)
    assert data.shard(ds, 0, 1, seed=0) is ds
