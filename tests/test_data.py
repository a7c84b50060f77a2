"""Datasets and the grain pipeline: offline digits, a real tfds array_record dataset, image folders, and
the pipeline's promises (eval coverage, host sharding, resumable iterators) as properties."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import write_images
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cnnjax import data
from cnnjax.data.recipes import IMAGENET_RECIPES
from cnnjax.data.sources import TFDS, ArraySource


def index_dataset(n, shape=(4, 4, 1), style="small"):
  """n examples whose label is their index (mod 2**31) and whose pixels are index % 256; for the `imagenet`
  style, whose crops would all look alike on a flat image, a gradient is added, so each crop shows where it is."""
  images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, *shape)).copy()
  if style == "imagenet":
    h, w = shape[:2]
    images += (np.arange(h)[:, None, None] * 7 + np.arange(w)[None, :, None] * 13).astype(np.uint8)
  source = ArraySource(images, np.arange(n))
  spec = {"cifar": TFDS["cifar10"], "imagenet": TFDS["imagenette"]}.get(style, data.sources.Spec(style))
  return data.Dataset("index", source, source, n, spec)


def test_digits_builds_offline_without_tensorflow(tmp_path):
  code = (
    "import sys; from cnnjax import data; d = data.load('digits', sys.argv[1]);"
    "assert 'tensorflow' not in sys.modules; print(len(d.train), len(d.test), d.num_classes)"
  )
  result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split()[-3:] == ["1500", "297", "10"]


def test_digits_are_scikit_learns_digits(tfds_dir):
  from sklearn.datasets import load_digits

  d = data.load("digits", tfds_dir)
  ours = sorted(
    (e["image"].tobytes(), e["label"]) for split in (d.train, d.test) for e in (split[i] for i in range(len(split)))
  )
  ref = load_digits()
  theirs = sorted(
    (np.minimum(im * 16, 255).astype(np.uint8)[..., None].tobytes(), int(t)) for im, t in zip(ref.images, ref.target)
  )
  assert ours == theirs


def test_a_real_tfds_dataset_goes_through_the_pipeline(local_cifar10):
  d = data.load("cifar10", local_cifar10)
  assert (len(d.train), len(d.test), d.num_classes) == (24, 10, 10)
  batch = next(iter(data.train_batches(d, (32, 32, 3), data.Layout(8, local_devices=2), seed=0)))
  assert batch["image"].shape == (2, 4, 32, 32, 3) and batch["image"].dtype == np.uint8
  batches = list(data.eval_batches(d, (32, 32, 3), data.Layout(4, local_devices=2)))
  labels = np.concatenate([b["label"].ravel()[b["mask"].ravel() == 1] for b in batches])
  means = np.concatenate([b["image"].reshape(-1, 32 * 32 * 3).mean(1)[b["mask"].ravel() == 1] for b in batches])
  assert sorted(labels) == list(range(10))  # each test example once (tfds stores them in its own order)
  assert np.all(np.abs(means - 10 * labels - 2) < 1)  # test example i: label i, PNG pixels 10 i + noise in 0..4


def test_unprepared_dataset_says_where_and_how(tmp_path):
  with pytest.raises(data.DatasetError) as e:
    data.load("cifar10", str(tmp_path))
  message = str(e.value)
  assert str(tmp_path) in message and "tfds build cifar10 --file_format=array_record" in message
  assert "digits" in message and "pip install -e '.[prepare]'" in message
  with pytest.raises(data.DatasetError, match="--manual_dir"):
    data.load("imagenet2012", str(tmp_path))


def test_unknown_dataset_lists_the_valid_ones():
  with pytest.raises(data.DatasetError, match=r"unknown dataset 'cifar11'.*digits.*cifar10.*imagefolder"):
    data.load("cifar11")
  with pytest.raises(
    data.DatasetError, match=r"no dataset given: set --config.dataset \(your images: imagefolder:/path\)"
  ):
    data.load("")


def test_fake_datasets():
  d = data.load("fake:20x24x1:7")
  assert d.num_classes == 7 and d.train[3]["image"].shape == (20, 24, 1) and d.train[9]["label"] == 2
  with pytest.raises(data.DatasetError, match="fake:HxWxC:CLASSES"):
    data.load("fake:big")


def test_image_folder_with_train_and_test(tmp_path):
  write_images(tmp_path, {"train/cat": 3, "train/dog": 2, "test/cat": 1, "test/dog": 1})
  d = data.load(f"imagefolder:{tmp_path}")
  assert d.num_classes == 2 and len(d.train) == 5 and len(d.test) == 2
  assert [d.train[i]["label"] for i in range(5)] == [0, 0, 0, 1, 1]  # classes in sorted order: cat, dog
  assert [int(d.train[i]["image"][0, 0, 0]) for i in range(5)] == [0, 1, 2, 3, 4]
  batch = next(iter(data.eval_batches(d, (16, 16, 3), data.Layout(2))))
  assert batch["image"].shape == (1, 2, 16, 16, 3)


def test_image_folder_without_test_holds_out_a_fixed_fraction(tmp_path):
  write_images(tmp_path, {"a": 10, "b": 10})
  d = data.load(f"imagefolder:{tmp_path}")
  assert (len(d.train), len(d.test)) == (18, 2)
  assert sorted(d.test[i]["label"] for i in range(2)) == [0, 1]


def test_image_folder_errors(tmp_path):
  with pytest.raises(data.DatasetError, match="does not exist"):
    data.load(f"imagefolder:{tmp_path / 'missing'}")
  with pytest.raises(data.DatasetError, match="no class sub-folders"):
    data.load(f"imagefolder:{tmp_path}")
  write_images(tmp_path / "x", {"train/cat": 1, "train/dog": 1, "test/cat": 1, "test/owl": 1})
  with pytest.raises(data.DatasetError, match=r"only in train: \['dog'\]; only in test: \['owl'\]"):
    data.load(f"imagefolder:{tmp_path / 'x'}")
  write_images(tmp_path / "y", {"cat": 2})
  (tmp_path / "y" / "dog").mkdir()
  with pytest.raises(data.DatasetError, match="without image files: dog"):
    data.load(f"imagefolder:{tmp_path / 'y'}")


def _photo(path, size=(40, 30), **save):
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), np.uint8)).save(path, **save)


def test_image_folders_read_every_format_pillow_reads_and_list_other_files(tmp_path, capsys):
  folder = tmp_path / "a"
  folder.mkdir()
  for i, suffix in enumerate((".jpg", ".JPEG", ".png", ".webp", ".bmp", ".gif", ".tif", ".ppm")):
    _photo(folder / f"{i}{suffix}")
  (folder / "notes.txt").write_text("labels were checked")
  (folder / ".DS_Store").write_bytes(b"\0")
  d = data.load(f"imagefolder:{tmp_path}")
  assert len(d.train) + len(d.test) == 8  # every image format, not the text file or the hidden one
  assert all(
    d.train[i]["image"].shape == (30, 40, 3) and d.train[i]["image"].dtype == np.uint8 for i in range(len(d.train))
  )
  assert "1 file(s) that are not images left out: " in capsys.readouterr().err


def test_unreadable_image_files_are_reported_together_then_left_out_or_stop_the_run(tmp_path, capsys):
  write_images(tmp_path, {"cat": 3, "dog": 3})
  (tmp_path / "dog" / "empty.png").write_bytes(b"")
  (tmp_path / "cat" / "text.jpg").write_text("not a jpeg")
  d = data.load(f"imagefolder:{tmp_path}")
  err = capsys.readouterr().err
  assert "2 of 8 files cannot be read as images, left out: " in err and "empty.png" in err and "text.jpg" in err
  assert len(d.train) + len(d.test) == 6
  with pytest.raises(data.DatasetError, match=r"2 of 8 files cannot be read as images: .*bad_images='skip'"):
    data.load(f"imagefolder:{tmp_path}", bad_images="stop")


def test_a_truncated_jpeg_is_skipped_with_a_warning_or_stops_the_run(tmp_path, capsys):
  (tmp_path / "train" / "cat").mkdir(parents=True)
  (tmp_path / "test" / "cat").mkdir(parents=True)
  for i in range(3):
    _photo(tmp_path / "train" / "cat" / f"{i}.jpg", size=(64, 48), quality=90)
  _photo(tmp_path / "test" / "cat" / "0.jpg")
  whole = (tmp_path / "train" / "cat" / "1.jpg").read_bytes()
  (tmp_path / "train" / "cat" / "1.jpg").write_bytes(whole[: len(whole) // 2])  # the header reads, the data is cut
  d = data.load(f"imagefolder:{tmp_path}")
  assert len(d.train) == 3  # the start-up check reads headers only: this file passes it
  stand_in = d.train[1]["image"]
  np.testing.assert_array_equal(stand_in, d.train[2]["image"])  # the next file stands in, the batch keeps its size
  assert capsys.readouterr().err.count("1.jpg: image file is truncated") == 1
  d.train[1]
  assert capsys.readouterr().err == ""  # reported once
  strict = data.load(f"imagefolder:{tmp_path}", bad_images="stop")
  with pytest.raises(data.DatasetError, match=r"cannot decode image .*1\.jpg: image file is truncated"):
    strict.train[1]


@settings(max_examples=25)
@given(st.integers(1, 120), st.sampled_from([1, 2, 4]), st.sampled_from([1, 2, 3]), st.integers(1, 5))
def test_eval_covers_every_example_exactly_once(n, devices, processes, per_device):
  d = index_dataset(n)
  seen, counts = [], set()
  for p in range(processes):
    layout = data.Layout(per_device * devices * processes, devices, p, processes)
    batches = list(data.eval_batches(d, (4, 4, 1), layout))
    counts.add(len(batches))
    for b in batches:
      assert b["image"].shape[:2] == b["mask"].shape == (devices, per_device)
      seen += list(b["label"][b["mask"] == 1])
      assert not b["image"][b["mask"] == 0].any()  # padding is blank
  assert sorted(seen) == list(range(n))
  assert len(counts) == 1  # every host steps through the same number of batches


# Each dataset style with each training recipe it takes (cnnjax/data/recipes.py)
STYLE_RECIPES = [("cifar", "cifar"), ("cifar", "none"), ("small", "none"), *(("imagenet", r) for r in IMAGENET_RECIPES)]


@settings(max_examples=30)
@given(
  st.integers(8, 100),
  st.sampled_from([1, 2, 3, 4]),
  st.integers(1, 4),
  st.integers(0, 99),
  st.sampled_from(STYLE_RECIPES),
)
def test_hosts_read_disjoint_rows_of_the_batches_one_host_would_read(n, processes, local_batch, seed, style_recipe):
  """Concatenated in process order, the hosts' batches are the single-host global batches, augmentation included
  (each recipe's draws are fixed by the seed, the step and the row), so a run does not depend on how many hosts share
  it; one epoch of them covers each example at most once."""
  (style, recipe), shape, batch = style_recipe, (8, 8, 3), local_batch * processes
  d = index_dataset(n, shape, style)
  single = _take(iter(data.train_batches(d, shape, data.Layout(batch), seed, recipe)), 3)
  hosts = [
    _take(iter(data.train_batches(d, shape, data.Layout(batch, 1, p, processes), seed, recipe)), 3)
    for p in range(processes)
  ]
  for step, whole in enumerate(single):
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([h[step][key] for h in hosts], axis=1), whole[key])
  epoch = np.concatenate([b["label"].ravel() for b in single])[: n - n % batch]
  assert len(set(epoch.tolist())) == len(epoch)


def _take(iterator, k):
  return [next(iterator) for _ in range(k)]


def _equal(a, b):
  return len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


@pytest.mark.parametrize("style,recipe", STYLE_RECIPES)
def test_a_restored_iterator_yields_the_same_next_batches(style, recipe):
  """What makes a resumed run bit-identical under every recipe: the batches after a checkpoint's iterator state."""
  d = index_dataset(50, (8, 8, 3), style)
  pipeline = lambda: iter(data.train_batches(d, (8, 8, 3), data.Layout(8, local_devices=2), seed=3, augment=recipe))
  original = pipeline()
  _take(original, 9)  # across an epoch boundary (50 / 8)
  state = original.get_state()
  expected = _take(original, 5)
  resumed = pipeline()
  resumed.set_state(state)
  assert _equal(_take(resumed, 5), expected)


def test_digits_pipeline_is_deterministic_and_seeded(tfds_dir):
  d = data.load("digits", tfds_dir)
  make = lambda seed: _take(iter(data.train_batches(d, (32, 32, 1), data.Layout(16), seed)), 3)
  assert _equal(make(0), make(0))
  assert not _equal(make(0), make(1))


def test_worker_processes_give_the_same_batches():
  d = index_dataset(64, (8, 8, 3), "cifar")
  make = lambda workers: _take(
    iter(data.train_batches(d, (8, 8, 3), data.Layout(8), seed=0, augment="cifar", workers=workers)), 6
  )
  assert _equal(make(0), make(2))


def test_batch_size_must_split_over_devices():
  with pytest.raises(ValueError, match=r"does not split evenly over 2 host.*4 device"):
    data.Layout(12, local_devices=4, process_count=2)


RECIPE = {"small": "none", "cifar": "cifar", "imagenet": "inception"}


@pytest.mark.parametrize(
  "name,shape,classes,style",
  [
    ("mnist", (32, 32, 1), 10, "small"),  # 28x28 digits padded into LeNet-5's 32x32 field
    ("cifar100", (32, 32, 3), 100, "cifar"),
    ("imagenette", (64, 64, 3), 10, "imagenet"),  # JPEGs of any size, cropped (train) or resized and centred (test)
  ],
)
def test_the_other_tfds_datasets_read_and_batch_as_their_settings_say(small_tfds, name, shape, classes, style):
  d = data.load(name, small_tfds)
  assert d.num_classes == classes and d.spec.style == style and len(d.train) == 12 and len(d.test) == 6
  batch = next(iter(data.train_batches(d, shape, data.Layout(4, 2), seed=0, augment=RECIPE[style])))
  assert batch["image"].shape == (2, 2, *shape) and batch["image"].dtype == np.uint8
  assert set(batch["label"].ravel().tolist()) <= set(range(classes))
  evaluation = list(data.eval_batches(d, shape, data.Layout(4, 2)))
  assert sum(int(b["mask"].sum()) for b in evaluation) == 6  # the whole test split, once
  if name == "mnist":  # centred, the border zero
    assert not batch["image"][..., :2, :, :].any() and not batch["image"][..., -2:, :, :].any()


def test_a_subset_of_classes_and_shots_is_a_dataset_of_its_own():
  images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)
  labels = np.arange(40) % 4  # 10 examples of each of 4 classes
  whole = data.Dataset(
    "toy", ArraySource(images, labels), ArraySource(images[:8], labels[:8]), 4, TFDS["mnist"], ("a", "b", "c", "d")
  )
  task = data.subset(whole, classes=(3, 1), shots=2)
  assert (task.num_classes, task.class_names) == (2, ("d", "b"))
  # the first 2 training examples of classes 3 and 1, in the dataset's order, labelled by their place in `classes`
  assert [(int(r["image"][0, 0, 0]), r["label"]) for r in task.train.__getitems__(range(len(task.train)))] == [
    (1, 1),
    (3, 0),
    (5, 1),
    (7, 0),
  ]
  assert [r["label"] for r in task.test.__getitems__(range(len(task.test)))] == [
    1,
    0,
    1,
    0,
  ]  # every test example of both
  with pytest.raises(data.DatasetError, match=r"classes \(3, 4\) must be distinct labels of toy, from 0 to 3"):
    data.subset(whole, classes=(3, 4))


def test_a_batch_larger_than_the_training_split_is_refused_with_the_largest_that_fits():
  """100,000 on digits was once accepted (and killed by the kernel at 20 GB), 3,000 trained on repeated examples."""
  d = data.load("fake:8x8x1:3")  # 10,000 training images
  data.Layout(10_000, local_devices=8).check_fits(d)  # the whole split in one batch: fine
  with pytest.raises(ValueError) as refused:
    data.Layout(10_008, local_devices=8).check_fits(d)
  assert str(refused.value) == (
    "batch size 10,008 is larger than the 10,000 training examples of fake:8x8x1:3: the largest batch that fits is "
    "10,000 (1,250 per device on 8 device(s))"
  )
  with pytest.raises(ValueError, match=r"the largest batch that fits is 9,996 \(833 per device on 12 device"):
    data.Layout(12_000, local_devices=4, process_count=3).check_fits(d)
