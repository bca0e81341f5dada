"""data.real_images: the documented counts, the split by source, determinism, shapes, and
the error that names a missing package."""
import numpy as np
import pytest

from data import real_images

pytest.importorskip("cv2", reason="opencv-python-headless missing: bash scripts/setup.sh")
if not (real_images.OPENCV_DOC / "data" / "vtest.avi").exists():
    pytest.skip("Debian opencv-doc missing: bash scripts/setup.sh", allow_module_level=True)


def test_counts_are_the_documented_ones():
    counts = real_images.counts()
    if any(s.key.startswith("scikit-learn:") for s in real_images.sources()):
        pytest.skip("scikit-learn's photos are installed: the documented counts leave them out")
    assert counts["calibration"] == {"stills": 114, "frames": 863, "images": 977,
                                     "sources": 53}
    assert counts["evaluation"] == {"stills": 54, "frames": 270, "images": 324, "sources": 29}
    stills = sum(s.frames for s in real_images.sources()
                 if s.key.startswith("opencv-doc:") and not s.video)
    assert stills == 140


def test_split_is_by_source_and_videos_stay_whole():
    calibration = {it.source for it in real_images.catalog("calibration")}
    evaluation = {it.source for it in real_images.catalog("evaluation")}
    assert calibration and evaluation and not calibration & evaluation
    paths = {split: {(it.path, it.frame) for it in real_images.catalog(split)}
             for split in real_images.SPLITS}
    assert not paths["calibration"] & paths["evaluation"]
    frames = {split: {it.path.name for it in real_images.catalog(split)
                      if it.path.suffix == ".avi"} for split in real_images.SPLITS}
    assert frames == {"calibration": {"vtest.avi", "tree.avi"}, "evaluation": {"Megamind.avi"}}
    # Stereo pairs and edited copies of one photo are one source, on one side.
    assert real_images.split_of(next(s for s in real_images.sources()
                                     if s.key == "opencv-doc:data/aloe")) in real_images.SPLITS
    aloe = [it for split in real_images.SPLITS for it in real_images.catalog(split)
            if it.path.stem.startswith("aloe")]
    assert len(aloe) == 3 and len({it.source for it in aloe}) == 1


def test_every_video_decodes_exactly_its_counted_frames():
    cv2 = pytest.importorskip("cv2")
    for name, (_, frames) in real_images.VIDEOS.items():
        capture = cv2.VideoCapture(str(real_images.OPENCV_DOC / "data" / name))
        decoded = 0
        while capture.grab():
            decoded += 1
        capture.release()
        assert decoded == frames, name
    items = [it for it in real_images.catalog("calibration") if it.path.name == "vtest.avi"]
    assert sorted(it.frame for it in items) == list(range(795))
    assert real_images._read_frames(items[0].path, [794])[794].shape == (576, 768, 3)


def test_load_is_deterministic_with_the_requested_shape_and_dtype():
    a = real_images.load("calibration", size=(48, 64), limit=12)
    b = real_images.load("distillation", size=(48, 64), limit=12)
    assert a.shape == (12, 48, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    f = real_images.load("eval", size=(40, 40), limit=6, dtype=np.float32)
    assert f.shape == (6, 40, 40, 3) and f.dtype == np.float32
    assert 0.0 <= f.min() and f.max() <= 1.0 and f.std() > 0.05   # real content, not blank
    u = real_images.load("evaluation", size=(40, 40), limit=6)
    np.testing.assert_allclose(f, u / 255.0, atol=1e-6)
    # A limit takes a spread of sources, not one video's first frames.
    first = real_images.catalog("calibration")[:20]
    assert len({it.source for it in first}) == 20


def test_fit_centre_crops_to_the_aspect_ratio():
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 100:200] = 255                 # the centre third is white
    out = real_images.fit(image, (50, 50))
    assert out.shape == (50, 50, 3) and out.min() == 255
    tall = real_images.fit(np.arange(400 * 10, dtype=np.uint8).reshape(400, 10, 1)
                           .repeat(3, 2), (20, 20))
    assert tall.shape == (20, 20, 3)


def test_unknown_split_and_missing_package_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        real_images.catalog("train")
    monkeypatch.setattr(real_images, "OPENCV_DOC", tmp_path)
    with pytest.raises(real_images.RealImagesUnavailable, match="opencv-doc.*setup.sh"):
        real_images._opencv_doc()
    with pytest.raises(real_images.RealImagesUnavailable, match="no-such-package.*setup.sh"):
        real_images._bundled("no-such-package", "no_such_module_xyz", True, "data")
    assert real_images._bundled("x", "no_such_module_xyz", False) == []
