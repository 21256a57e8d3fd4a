"""Data sets: image folders (layout, class order, decoding, augmentation, bounded read-ahead, torchrun
shards, resume), arrays mapped from .npy/.npz, and the one-line errors of bad data."""

from __future__ import annotations

import json
import threading
import time
import warnings
import weakref

import numpy as np
import onnx
import pytest
from builders import Net, small_bn_net
from PIL import Image

from morphnet_onnx import MorphNetError
from morphnet_onnx.cli import main
from morphnet_onnx.loading.model import load
from morphnet_onnx.recipes.shrink import evaluate, train
from morphnet_onnx.training import arrays as array_reading, images
from morphnet_onnx.training.arrays import ArrayDataset, read_arrays
from morphnet_onnx.training.data import load_data, open_data
from morphnet_onnx.training.distributed import World
from morphnet_onnx.training.images import ImageFolder, ImageOptions
from morphnet_onnx.training.trainer import TrainOptions

CLASSES = ["cat", "dog", "eel", "fox"]  # small_bn_net has 4 outputs


def write_images(root, per_class: int = 6, classes=CLASSES, size=(8, 8), seed: int = 0):
    """root/CLASS/NNN.png of random pixels (a JPEG and a nested folder in the first class)."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(reversed(classes)):  # made in reverse: the order must come from sorting
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture
def net(tmp_path):
    small_bn_net(tmp_path)
    return load(tmp_path / "net.onnx")


@pytest.fixture
def folder(tmp_path):
    return write_images(tmp_path / "train")


def quick(**kw):
    kw.setdefault("batch_size", 4)
    return TrainOptions(progress=False, probe=False, **kw)


def gray_net(path, classes: int = 3):
    net = Net(input_shape=(1, 1, 8, 8), batch="N")
    x = net.relu(net.conv("input", 1, 4, name="conv1"))
    x = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    onnx.save(net.model(net.gemm(x, 4, classes, name="fc")), str(path))
    return path


def test_layout_and_class_order(tmp_path, net):
    root = write_images(tmp_path / "d", per_class=2)
    (root / "cat" / "deeper").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "cat" / "deeper" / "x.JPG")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "dog" / ".hidden.png")
    data = load_data(root, None, net, "ce")
    assert isinstance(data, ImageFolder) and data.classes == CLASSES
    names = [f.decode() for f in data.files]
    assert names == ["cat/000.png", "cat/001.png", "cat/deeper/x.JPG", "dog/000.png", "dog/001.png",
                     "eel/000.png", "eel/001.png", "fox/000.png", "fox/001.png"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_decoding_resizes_converts_and_normalizes(tmp_path, net):
    root = tmp_path / "d"
    for name, (size, mode, colour) in zip(CLASSES, [((8, 8), "RGB", (255, 0, 51)), ((20, 12), "RGBA", (0, 255, 0, 9)),
                                                     ((5, 7), "L", 128), ((8, 8), "P", 3)]):
        (root / name).mkdir(parents=True)
        Image.new(mode, size, colour).save(root / name / "a.png")
    data = load_data(root, None, net, "ce")
    x = data.gather(np.arange(4), 0)["input"]
    assert x.shape == (4, 3, 8, 8) and x.dtype == np.float32
    mean, std = np.array(images.IMAGENET_MEAN), np.array(images.IMAGENET_STD)
    expected_first = (np.array([255, 0, 51]) / 255 - mean) / std
    np.testing.assert_allclose(x[0], np.broadcast_to(expected_first[:, None, None], (3, 8, 8)), rtol=1e-5)
    np.testing.assert_allclose(x[1, :, 3, 3], (np.array([0, 1, 0]) - mean) / std, rtol=1e-5)  # alpha dropped
    np.testing.assert_allclose(x[2], (128 / 255 - mean[:, None, None]) / std[:, None, None]
                               * np.ones((3, 8, 8)), rtol=1e-5)  # gray to RGB
    custom = load_data(root, None, net, "ce", ImageOptions(mean=(0.5,), std=(0.25,)))
    np.testing.assert_allclose(custom.gather(np.array([0]), 0)["input"][0, :, 0, 0],
                               (np.array([255, 0, 51]) / 255 - 0.5) / 0.25, rtol=1e-5)


def test_one_channel_inputs_read_grayscale_with_half_mean_and_std(tmp_path):
    loaded = load(gray_net(tmp_path / "g.onnx"))
    root = write_images(tmp_path / "d", per_class=1, classes=["a", "b", "c"])
    data = load_data(root, None, loaded, "ce")
    x = data.gather(np.array([0]), 0)["input"]
    gray = np.asarray(Image.open(root / "a" / "000.png").convert("L"), np.float32)
    np.testing.assert_allclose(x[0, 0], (gray / 255 - 0.5) / 0.5, rtol=1e-5, atol=1e-6)


def test_augmentation_on_training_data_only(tmp_path, net, folder):
    write_images(tmp_path / "val", per_class=2, seed=1)
    train_set, val_set = open_data(folder, tmp_path / "val", None, net, "ce", ImageOptions())
    rows = np.arange(len(train_set))
    assert train_set.augment and not val_set.augment
    first, again, other = (train_set.gather(rows, seed)["input"] for seed in (3, 3, 4))
    np.testing.assert_array_equal(first, again)  # a function of the seed and the example
    assert not np.allclose(first, other)
    plain = load_data(folder, None, net, "ce").gather(rows, 3)["input"]  # as --val and evaluate read it
    assert not np.allclose(first, plain)
    off, _ = open_data(folder, None, None, net, "ce", ImageOptions(augment=False))  # --no-augment
    np.testing.assert_array_equal(off.gather(rows, 3)["input"], plain)
    np.testing.assert_array_equal(val_set.gather(np.arange(2), 3)["input"], val_set.gather(np.arange(2), 4)["input"])


def test_read_ahead_is_bounded(tmp_path, net, monkeypatch):
    """Count the batches of decoded images alive at once while a slow loop consumes them."""
    root = write_images(tmp_path / "d", per_class=16)
    data = load_data(root, None, net, "ce", ImageOptions(workers=2), augment=True)
    live, peak, lock = [0], [0], threading.Lock()
    gather = ImageFolder.gather

    def counted(self, rows, seed):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        batch = gather(self, rows, seed)

        def release():
            with lock:
                live[0] -= 1
        weakref.finalize(batch["input"], release)
        return batch

    monkeypatch.setattr(ImageFolder, "gather", counted)
    count = 0
    for batch in data.batches(4, True, 0):
        time.sleep(0.02)  # a step: the threads run ahead meanwhile
        count += 1
    del batch
    assert count == 16 and live[0] == 0
    assert 2 <= peak[0] <= data.prefetch + 1 == 5


def test_each_rank_reads_only_its_rows(net, folder, monkeypatch):
    data = load_data(folder, None, net, "ce", augment=True)
    whole = list(data.batches(8, True, 5))
    read: list[int] = []
    gather = ImageFolder.gather
    monkeypatch.setattr(ImageFolder, "gather", lambda self, rows, seed: (read.extend(rows.tolist()),
                                                                          gather(self, rows, seed))[1])
    shares = [list(data.batches(8, True, 5, shard=World(rank, 2))) for rank in (0, 1)]
    assert sorted(read) == list(range(len(data)))  # every example read once, by one rank
    for k, batch in enumerate(whole):
        for rank in (0, 1):
            np.testing.assert_array_equal(shares[rank][k]["input"], batch["input"][rank::2])
            np.testing.assert_array_equal(shares[rank][k]["labels"], batch["labels"])  # labels stay global


@pytest.mark.parametrize("kind", ["images", "npz"])
def test_resuming_mid_epoch_gives_the_same_batches(tmp_path, net, folder, kind):
    data = load_data(folder if kind == "images" else tmp_path / "train.npz", None, net, "ce", augment=True)
    whole = list(data.batches(4, True, 7))
    resumed = list(data.batches(4, True, 7, skip=3))
    assert len(resumed) == len(whole) - 3
    for a, b in zip(whole[3:], resumed):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_a_run_killed_mid_epoch_resumes_to_the_same_model(tmp_path, net, folder, kill_training_at):
    """24 images, batches of 4 (6 an epoch): killed after step 3 of 9, mid-epoch, with the checkpoint of
    step 2; resumed, it writes the bytes of a run never killed (the same images, crops and flips)."""
    ckpt, options = tmp_path / "ckpt", dict(steps=9, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2)
    with kill_training_at(3), pytest.raises(KeyboardInterrupt):
        train(tmp_path / "net.onnx", folder, tmp_path / "a.onnx", options=quick(**options))
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    train(tmp_path / "net.onnx", folder, tmp_path / "b.onnx", options=quick(resume=True, **options))
    train(tmp_path / "net.onnx", folder, tmp_path / "c.onnx", options=quick(steps=9))
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes()
    other = train(tmp_path / "net.onnx", folder, tmp_path / "d.onnx", options=quick(steps=9, seed=1))
    assert other.steps == 9 and (tmp_path / "d.onnx").read_bytes() != (tmp_path / "c.onnx").read_bytes()


def test_arrays_are_mapped_not_read(tmp_path, net, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 10)
    np.savez(tmp_path / "d.npz", input=np.asfortranarray(x), labels=labels)
    (tmp_path / "dir").mkdir()
    np.save(tmp_path / "dir" / "x.npy", x)
    np.save(tmp_path / "dir" / "labels.npy", labels)
    for path in (tmp_path / "d.npz", tmp_path / "dir"):
        arrays = read_arrays(path)
        assert isinstance(arrays.get("input", arrays.get("x")), np.memmap)
        data = load_data(path, None, net, "ce")
        assert isinstance(data, ArrayDataset) and data.workers == 1
        batch = data.gather(np.array([7, 2]), 0)
        assert not isinstance(batch["input"], np.memmap)
        np.testing.assert_array_equal(batch["input"], x[[7, 2]])
        np.testing.assert_array_equal(data.labels, labels)
    np.savez_compressed(tmp_path / "c.npz", input=x, labels=labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # small compressed data: read, without a warning
        load_data(tmp_path / "c.npz", None, net, "ce")
    monkeypatch.setattr(array_reading, "COMPRESSED_WARNING_BYTES", x.nbytes)
    with pytest.warns(UserWarning, match="c.npz: input, labels compressed .* read into memory"):
        data = load_data(tmp_path / "c.npz", None, net, "ce")
    assert data.workers == 0 and not isinstance(data.arrays["input"], np.memmap)
    np.testing.assert_array_equal(data.arrays["input"], x)


def test_the_cli_prints_the_compressed_warning_on_one_line(tmp_path, net, capsys, monkeypatch):
    monkeypatch.setattr(array_reading, "COMPRESSED_WARNING_BYTES", 0)
    rng = np.random.default_rng(0)
    np.savez_compressed(tmp_path / "c.npz", input=rng.standard_normal((8, 3, 8, 8)).astype(np.float32),
                        labels=rng.integers(0, 4, 8))
    assert main(["evaluate", str(tmp_path / "net.onnx"), "--data", str(tmp_path / "c.npz")]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"[W] {tmp_path / 'c.npz'}: input, labels compressed") and err.count("\n") == 1, err


def test_train_and_evaluate_an_image_folder_write_the_classes(tmp_path, net, folder, capsys):
    write_images(tmp_path / "val", per_class=2, seed=1)
    out = tmp_path / "t.onnx"
    assert main(["train", str(tmp_path / "net.onnx"), "--data", str(folder), "--val", str(tmp_path / "val"),
                 "--steps", "3", "--batch-size", "4", "-o", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "classes (output index, folder): 0 cat, 1 dog, 2 eel, 3 fox; written to" in printed
    assert json.loads((tmp_path / "t.onnx.classes.json").read_text()) == CLASSES
    assert main(["evaluate", str(out), "--data", str(tmp_path / "val"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 8
    result = train(tmp_path / "net.onnx", folder, None, options=quick(steps=1))
    assert result.classes == CLASSES and result.to_dict()["classes"] == CLASSES


def test_a_folder_of_npy_files_trains(tmp_path, net):
    rng = np.random.default_rng(0)
    (tmp_path / "arrays").mkdir()
    np.save(tmp_path / "arrays" / "input.npy", rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    np.save(tmp_path / "arrays" / "labels.npy", rng.integers(0, 4, 16))
    result = train(tmp_path / "net.onnx", tmp_path / "arrays", tmp_path / "a.onnx", options=quick(steps=2))
    assert result.steps == 2 and result.classes is None and not (tmp_path / "a.onnx.classes.json").exists()


def broken(tmp_path, kind):
    """(data, val, extra options, the text the error must hold) for one way an image folder is wrong."""
    data = tmp_path / "train"
    if kind == "empty_folder":
        data.mkdir()
        return data, None, [], f"{data}: no class folders"
    write_images(data, per_class=2)
    if kind == "empty_class":
        (data / "gnu").mkdir()
        (data / "gnu" / "readme.txt").write_text("")
        return data, None, [], f"{data / 'gnu'}: no PNG or JPEG images"
    if kind == "unreadable":
        (data / "dog" / "001.png").write_text("not a png")
        return data, None, [], f"{data / 'dog' / '001.png'}: cannot read the image"
    if kind == "truncated":
        path = data / "eel" / "000.png"
        path.write_bytes(path.read_bytes()[:60])
        return data, None, [], f"{path}: cannot read the image"
    if kind == "val_classes":
        write_images(tmp_path / "val", per_class=1, classes=["cat", "dog", "eel", "gnu"])
        return data, tmp_path / "val", [], f"{tmp_path / 'val'}: class folders lack fox and add gnu compared with"
    if kind == "model_classes":
        write_images(tmp_path / "five", per_class=1, classes=CLASSES + ["gnu"])
        return tmp_path / "five", None, [], "5 class folders, but the model has 4 classes"
    if kind == "mse":
        return data, None, ["--loss", "mse"], "train it with --loss ce"
    if kind == "std":
        return data, None, ["--std", "0.2,0"], "--std 0.2,0.0: must be above 0"
    if kind == "mean_channels":
        return data, None, ["--mean", "0.1,0.2"], "--mean: 2 values, the model input 'input' has 3 channels"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["empty_folder", "empty_class", "unreadable", "truncated", "val_classes",
                                  "model_classes", "mse", "std", "mean_channels"])
def test_bad_image_folders_are_one_line_errors(tmp_path, net, kind, capsys):
    data, val, extra, text = broken(tmp_path, kind)
    out = tmp_path / "out.onnx"
    argv = ["train", str(tmp_path / "net.onnx"), "--data", str(data), "--steps", "2", "--batch-size", "8",
            "-o", str(out), "--no-progress", *extra] + (["--val", str(val)] if val else [])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert text in err, err
    assert not out.exists() and not images.classes_path(out).exists()


def test_evaluate_checks_the_classes_written_beside_the_model(tmp_path, net, folder):
    model = tmp_path / "net.onnx"
    images.write_classes(model, ["ant", "dog", "eel", "fox"])
    with pytest.raises(MorphNetError, match=r"class folders lack ant and add cat compared with the classes the "
                                            r"model was trained on \(.*net.onnx.classes.json\)"):
        evaluate(model, folder)
    images.write_classes(model, CLASSES)
    assert evaluate(model, folder).examples == 24


def test_image_options_and_one_input_models(tmp_path, folder):
    with pytest.raises(MorphNetError, match="--data-workers 0: must be a whole number, 1 or more"):
        ImageOptions(workers=0)
    with pytest.raises(MorphNetError, match="--mean 1,2,3,4: give 1 or 3 numbers"):
        ImageOptions(mean=(1, 2, 3, 4))
    net = Net(input_shape=(1, 3, 8, 8), batch="N")
    x = net.op("Add", ["input", "input2"])
    x = net.op("Flatten", [net.op("GlobalAveragePool", [net.conv(x, 3, 4, name="c")])], axis=1)
    model = net.model(x)
    model.graph.input.append(onnx.helper.make_tensor_value_info("input2", onnx.TensorProto.FLOAT, ["N", 3, 8, 8]))
    with pytest.raises(MorphNetError, match="an image folder feeds a model with one input; this one has 2"):
        load_data(folder, None, load(model), "ce")
