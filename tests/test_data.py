import numpy as np
import pytest
import torch
from PIL import Image

from cyclelike.config import ConfigError, RunConfig
from cyclelike.data import DataError, derangement, load_domains, load_folder, load_hdf5, shared_domains
from cyclelike.synthetic import synthetic_domain


def write_mixed_folder(root, n_extra=0):
    """One image of every kind a user's folder may hold, nested, with the values we expect back."""
    (root / "nested" / "deeper").mkdir(parents=True)
    red = np.zeros((20, 20, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(root / "a_rgb.png")
    Image.fromarray(red).save(root / "b_rgb.jpg", quality=95)
    Image.fromarray(red).save(root / "nested" / "c_rgb.webp", lossless=True)
    Image.fromarray(red).save(root / "nested" / "deeper" / "d_rgb.bmp")
    Image.fromarray(np.full((20, 20), 128, np.uint8), "L").save(root / "e_grey.png")
    Image.fromarray(red).convert("P").save(root / "f_palette.png")
    rgba = np.concatenate([red, np.full((20, 20, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(root / "g_rgba.png")
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(root / "h_grey16.png")
    (root / "notes.txt").write_text("not an image")
    for i in range(n_extra):
        Image.fromarray(np.full((24, 16, 3), i * 10, np.uint8)).save(root / f"z{i:02d}.png")


def test_folder_reads_every_format_and_mode_as_rgb(tmp_path):
    write_mixed_folder(tmp_path)
    pool = load_folder(tmp_path, 16)
    assert pool.images.shape == (8, 3, 16, 16)
    assert pool.names[:2] == ["a_rgb.png", "b_rgb.jpg"]  # file-name order, the aligned order
    assert pool.images.min() >= -1 and pool.images.max() <= 1
    by_name = dict(zip(pool.names, pool.images, strict=True))
    for name in ("a_rgb.png", "nested/c_rgb.webp", "nested/deeper/d_rgb.bmp", "f_palette.png", "g_rgba.png"):
        assert torch.allclose(by_name[name].mean(dim=(1, 2)), torch.tensor([1.0, -1.0, -1.0]), atol=0.02), name
    assert torch.allclose(by_name["e_grey.png"], torch.full((3, 16, 16), 128 / 255 * 2 - 1), atol=0.01)
    assert torch.allclose(by_name["h_grey16.png"], torch.ones(3, 16, 16), atol=0.01)  # 16-bit white stays white


def test_corrupt_file_is_named(tmp_path):
    write_mixed_folder(tmp_path)
    good = (tmp_path / "a_rgb.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(good[: len(good) // 2])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match="broken.png"):
        load_folder(tmp_path, 16)
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}  # nothing modified


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "missing", 16)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no images .* under .*empty"):
        load_folder(tmp_path / "empty", 16)


def two_folders(root) -> RunConfig:
    """Domains X and Y as two folders of 12 images each, and a config that trains on 6 and holds out 2."""
    for name in ("X", "Y"):
        write_mixed_folder(root / name, n_extra=4)
    return RunConfig(data="folders", x_path=str(root / "X"), y_path=str(root / "Y"), n_images=6, n_holdout=2,
                     image_size=16)


def test_load_domains_from_folders_splits_and_checks_counts(tmp_path):
    config = two_folders(tmp_path)
    data = load_domains(config)
    assert data.x.shape == (6, 3, 16, 16) and data.x_holdout.shape == (2, 3, 16, 16)
    assert data.x_names == sorted(data.x_names) and data.x_names == data.y_names  # aligned rows
    assert len(data.x_holdout_names) == 2 and not set(data.x_holdout_names) & set(data.x_names)
    with pytest.raises(DataError, match=r"X has 12 images; n_images=20"):
        load_domains(config.replace(n_images=20))


def test_aligned_pairing_refuses_folders_of_different_sizes(tmp_path):
    """Two splits of different pools would pair other rows than the files' order says."""
    config = two_folders(tmp_path)
    (tmp_path / "Y" / "z03.png").unlink()
    with pytest.raises(DataError, match=r"pairing=aligned .*X has 12 images and .*Y has 11"):
        load_domains(config)
    assert load_domains(config.replace(pairing="shuffled")).n == 6  # no pair is given: nothing to misalign


def test_a_sweeps_shared_images_are_read_again_once_a_file_changes(tmp_path):
    """A worker keeps the images its trials share, but an image edited between two trials is a new data set."""
    config = two_folders(tmp_path)
    first = shared_domains(config)
    assert shared_domains(config.replace(seed=3)) is first  # another seed trains on the same images
    assert shared_domains(config.replace(n_images=5)).n == 5
    Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(tmp_path / "X" / "a_rgb.png")
    edited = shared_domains(config)

    def images(d):
        return torch.cat([d.x, d.x_holdout])

    assert not torch.equal(images(edited), images(first))
    assert torch.equal(images(edited), images(load_domains(config)))


def test_hdf5_layout_of_the_original(tmp_path):
    import h5py

    path = tmp_path / "train.hdf5"
    with h5py.File(path, "w") as f:
        f["train_data_raw"] = np.full((6, 24, 24, 1), 255, np.uint8)
        f["train_data_gen"] = np.zeros((6, 24, 24, 3), np.float32)
        f["val_data_raw"] = np.zeros((2, 24, 24, 1), np.uint8)
        f["val_data_gen"] = np.zeros((2, 24, 24, 3), np.float32)
    data = load_domains(RunConfig(data="hdf5", x_path=str(path), n_images=6, n_holdout=2, image_size=16))
    assert data.x.shape == (6, 3, 16, 16) and torch.all(data.x == 1)
    assert torch.all(data.y == -1)
    assert data.x_holdout.shape == (2, 3, 16, 16) and torch.all(data.x_holdout == -1)  # val_data_raw
    with pytest.raises(DataError, match="no dataset 'nope'"):
        load_hdf5(f"{path}:nope", "train_data_raw", 16)
    (tmp_path / "bad.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="bad.hdf5"):
        load_hdf5(str(tmp_path / "bad.hdf5"), "train_data_raw", 16)


def test_hdf5_with_a_nan_pixel_is_refused_naming_the_file(tmp_path):
    import h5py

    path = tmp_path / "nan.hdf5"
    images = np.zeros((4, 16, 16, 3), np.float32)
    images[2, 5, 5, 1] = np.nan
    with h5py.File(path, "w") as f:
        f["train_data_gen"] = images
    with pytest.raises(DataError, match=r"nan\.hdf5:train_data_gen has 1 NaN or infinite pixel"):
        load_hdf5(str(path), "train_data_gen", 16)


@pytest.mark.parametrize("array, words", [
    (np.full((4, 16, 16, 3), 0.5, np.float32), ["float values 0.5..0.5", "[0, 1]", "multiply"]),
    (np.linspace(-2000, 2000, 4 * 16 * 16 * 3).reshape(4, 16, 16, 3), ["values -2000..2000", "0..255"]),
    (np.full((4, 16, 16, 3), 300, np.int16), ["values 300..300", "0..255"]),
    (np.ones((4, 16, 16, 3), bool), ["dtype bool", "0..255"]),
], ids=["unit-floats", "out-of-range", "int-over-255", "bool"])
def test_hdf5_pixels_outside_0_255_are_refused_naming_file_key_and_range(tmp_path, array, words):
    import h5py

    path = tmp_path / "odd.hdf5"
    with h5py.File(path, "w") as f:
        f["train_data_raw"] = array
    with pytest.raises(DataError) as err:
        load_hdf5(str(path), "train_data_raw", 16)
    assert all(w in str(err.value) for w in [f"{path}:train_data_raw", *words]), str(err.value)


def test_shared_sample_files(shared_data):
    for name in ("buttai_nekokao_trainC.hdf5", "buttai_nekokao_trainG.hdf5"):
        path = shared_data / name
        raw = load_hdf5(str(path), "train_data_raw", 32)
        gen = load_hdf5(str(path), "train_data_gen", 32)
        assert raw.images.shape == gen.images.shape == (10, 3, 32, 32)
        assert raw.images.min() >= -1 and gen.images.max() <= 1
        assert gen.images.std() > 0.1  # real colour faces, not an all-black misread of float 0..255
    edges = load_hdf5(str(shared_data / "buttai_nekokao_trainC.hdf5"), "train_data_raw", 32).images
    assert edges.mean() > 0.5  # white background, black edges
    data = load_domains(RunConfig(data="hdf5", x_path=str(shared_data / "buttai_nekokao_trainG.hdf5"),
                                  n_images=8, n_holdout=2, image_size=32))
    assert data.x.shape == (8, 3, 32, 32) and data.y_holdout.shape == (2, 3, 32, 32)


def test_synthetic_is_deterministic_distinct_and_sized():
    a = synthetic_domain("faces", 200, 32)
    assert torch.equal(a[:5], synthetic_domain("faces", 5, 32))
    assert torch.equal(a[7:9], synthetic_domain("faces", 2, 32, start=7))
    for domain in ("faces", "planes"):
        images = a if domain == "faces" else synthetic_domain(domain, 200, 32)
        d = torch.cdist(images.flatten(1), images.flatten(1), p=1) / images[0].numel()
        d.fill_diagonal_(float("inf"))
        assert d.min() > 0.05, f"two {domain} images are nearly identical"
    for size in (16, 256):
        assert synthetic_domain("planes", 2, size).shape == (2, 3, size, size)


def test_pairings():
    base = RunConfig(n_images=8, n_holdout=2, image_size=16)
    aligned = load_domains(base)
    assert torch.equal(aligned.pi, torch.arange(8))
    fixed = load_domains(base.replace(pairing="fixed"))
    assert sorted(fixed.pi.tolist()) == list(range(8)) and not torch.equal(fixed.pi, torch.arange(8))
    assert torch.equal(fixed.pi, load_domains(base.replace(pairing="fixed", seed=5)).pi)  # data_seed decides
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(fixed.pairing_for_epoch(gen), fixed.pi)
    shuffled = load_domains(base.replace(pairing="shuffled"))
    draws = [shuffled.pairing_for_epoch(gen) for _ in range(5)]
    assert len({tuple(d.tolist()) for d in draws}) > 1
    assert torch.equal(aligned.x, fixed.x) and torch.equal(aligned.y, shuffled.y)
    # held-out images are never training images
    train = {tuple(t.flatten()[:64].tolist()) for t in aligned.x}
    assert not any(tuple(t.flatten()[:64].tolist()) in train for t in aligned.x_holdout)


def test_fixed_pairing_is_a_derangement_for_every_size_and_seed():
    """`fixed` must share no pair with `aligned`: one shared pair is 1/N of the fixed-vs-aligned control."""
    for seed in (0, 1, 7, 123):
        perms = [derangement(n, seed) for n in range(2, 201)]
        for n, perm in zip(range(2, 201), perms, strict=True):
            assert sorted(perm.tolist()) == list(range(n)), (n, seed)
            assert not (perm == np.arange(n)).any(), (n, seed)
    assert not np.array_equal(derangement(10, 0), derangement(10, 1))
    pi = load_domains(RunConfig(n_images=10, n_holdout=0, image_size=16, pairing="fixed", data_seed=0)).pi
    assert not (pi == torch.arange(10)).any()


def test_lfw_faces_give_disjoint_data_sets_whose_true_partners_the_edges_predictor_recovers():
    """scikit-image's bundled faces (nothing downloaded): X = each face's edge map, Y = the faces, row i the
    partner of row i. The truth is real: the edges predictor's optimal assignment finds it; pixel distances do
    not. Data sets never share a face, and one past the last is refused naming its range."""
    from analysis.pairing import evaluate_pairing

    seen = set()
    for d in (0, 4, 9):
        config = RunConfig(data="lfw", x_domain="edges", y_domain="faces", n_images=10, n_holdout=0,
                           pairing="shuffled", data_seed=d, image_size=32)
        data = load_domains(config)
        assert data.x.shape == data.y.shape == (10, 3, 32, 32) and data.x.min() >= -1 and data.y.max() <= 1
        partners = evaluate_pairing(lambda im: im, None, data.x, data.y).partners  # as a trial records them
        assert (partners["edges"] == np.arange(10)).mean() >= 0.9
        assert (partners["pixel"] == np.arange(10)).mean() <= 0.3
        assert not seen & set(data.y_names)
        seen |= set(data.y_names)
    others = load_domains(RunConfig(data="lfw", x_domain="faces", y_domain="faces", n_images=10, n_holdout=0,
                                    data_seed=4, pairing="shuffled", image_size=16))
    assert not set(others.x_names) & set(others.y_names)  # other people's faces: no pair is true
    with pytest.raises(DataError, match=r"data_seed=5: .* \(data_seed 0 to 4\)"):
        load_domains(RunConfig(data="lfw", x_domain="faces", y_domain="faces", n_images=10, n_holdout=0,
                               data_seed=5))
    with pytest.raises(ConfigError, match="data=lfw"):
        RunConfig(data="lfw", x_domain="planes").validate()
