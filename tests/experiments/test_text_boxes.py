"""DB post-processing and box F1 (experiments/text_boxes.py): boxes recovered from blurred
synthetic maps of known rectangles, F1 against hand-computed values, and the real PP-OCRv4
detector imported into JAX giving the same boxes as onnxruntime's output on real images."""
import numpy as np
import pytest
from scipy import ndimage

import cv2

from experiments import text_boxes


def _grown_by_unclip(corners, ratio=text_boxes.UNCLIP_RATIO):
    """Hand reference of the unclip: a (w, h) rectangle grown by w*h*ratio / (2(w+h)) on
    every side, corners computed with numpy about the rectangle's centre."""
    corners = np.asarray(corners, np.float64)
    centre = corners.mean(0)
    u, v = corners[1] - corners[0], corners[3] - corners[0]
    w, h = np.linalg.norm(u), np.linalg.norm(v)
    d = w * h * ratio / (2 * (w + h))
    u, v = u / w, v / h
    half_w, half_h = w / 2 + d, h / 2 + d
    return np.array([centre + sx * half_w * u + sy * half_h * v
                     for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))])


def _drawn_map(polygons, shape=(160, 200), sigma=1.0):
    """Probability 0.95 inside the pixel polygons, 0 outside, blurred."""
    mask = np.zeros(shape, np.uint8)
    for polygon in polygons:
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return ndimage.gaussian_filter(mask.astype(np.float32) * 0.95, sigma)


def _rotated(cx, cy, w, h, degrees):
    a = np.deg2rad(degrees)
    u, v = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    return np.array([(cx, cy) + sx * w / 2 * u + sy * h / 2 * v
                     for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))])


def _max_corner_distance(box, expected):
    """Largest distance between a corner of ``expected`` and the nearest corner of ``box``."""
    return max(np.min(np.linalg.norm(box - corner, axis=1)) for corner in expected)


def test_boxes_of_drawn_rectangles_are_the_rectangles_grown_by_the_unclip():
    drawn = [_rotated(60, 30, 80, 10, 0), _rotated(120, 100, 90, 14, 20),
             _rotated(40, 120, 36, 12, -35)]
    result = text_boxes.boxes_from_map(_drawn_map(drawn))
    boxes = result["boxes"]
    assert boxes.shape == (3, 4, 2)
    assert np.all(result["scores"] >= text_boxes.BOX_THRESH)
    for polygon in drawn:
        expected = _grown_by_unclip(polygon)
        nearest = min(boxes, key=lambda b: np.linalg.norm(b.mean(0) - expected.mean(0)))
        # Rasterising a turned polygon and the blur's reach past 0.3 widen each side of the
        # pixel region by up to ~1 px, which the unclip then grows a little further
        # (measured: 0.0, 2.6 and 2.6 px).
        assert _max_corner_distance(nearest, expected) < 3.5, (nearest, expected)
        assert text_boxes.polygon_iou(nearest, expected) > 0.8


def test_faint_small_and_merged_regions():
    faint = _drawn_map([_rotated(60, 40, 60, 12, 0)]) * 0.55      # score below box_thresh
    assert len(text_boxes.boxes_from_map(faint)["boxes"]) == 0
    thin = np.zeros((40, 60), np.float32)
    thin[20:22, 5:50] = 0.9                                     # short side 1 px < 3
    assert len(text_boxes.boxes_from_map(thin)["boxes"]) == 0
    assert len(text_boxes.boxes_from_map(np.zeros((32, 32)))["boxes"]) == 0
    # Two lines 2 px apart merge once blurred over the 0.3 threshold: one box.
    touching = _drawn_map([_rotated(60, 40, 80, 8, 0), _rotated(60, 50, 80, 8, 0)],
                          sigma=1.5)
    assert len(text_boxes.boxes_from_map(touching)["boxes"]) == 1


def test_detector_output_layouts():
    maps = np.stack([_drawn_map([_rotated(60, 30, 80, 10, 0)]), np.zeros((160, 200))])
    for layout in (maps, maps[:, None], maps[..., None]):
        counts = [len(b) for b in text_boxes.boxes_from_maps(layout)]
        assert counts == [1, 0]
    with pytest.raises(ValueError, match="one-channel"):
        text_boxes.boxes_from_maps(np.zeros((2, 3, 8, 8)))


def _square(x, y, side=10.0):
    return np.array([(x, y), (x + side, y), (x + side, y + side), (x, y + side)], np.float32)


def test_polygon_iou_of_shifted_and_rotated_squares():
    assert text_boxes.polygon_iou(_square(0, 0), _square(0, 0)) == pytest.approx(1.0)
    # shifted by half a side: intersection 50, union 150
    assert text_boxes.polygon_iou(_square(0, 0), _square(5, 0)) == pytest.approx(1 / 3)
    assert text_boxes.polygon_iou(_square(0, 0), _square(20, 0)) == 0.0
    # a square and itself turned 45 degrees about its centre: an octagon of area
    # 200 (sqrt 2 - 1) shared, union 200 - that
    turned = _rotated(5, 5, 10, 10, 45)
    octagon = 200 * (np.sqrt(2) - 1)
    assert text_boxes.polygon_iou(_square(0, 0), turned) == pytest.approx(
        octagon / (200 - octagon), rel=1e-4)


def test_box_f1_identical_disjoint_and_empty():
    boxes = [np.stack([_square(0, 0), _square(30, 0)]), np.stack([_square(0, 30)])]
    assert text_boxes.box_f1(boxes, boxes)["box_f1"] == 1.0
    far = [b + 100 for b in boxes]
    assert text_boxes.box_f1(far, boxes)["box_f1"] == 0.0
    empty = [np.zeros((0, 4, 2), np.float32)] * 2
    assert text_boxes.box_f1(empty, empty) == pytest.approx(
        dict(box_f1=1.0, box_precision=1.0, box_recall=1.0, matched_boxes=0, boxes=0,
             reference_boxes=0))
    assert text_boxes.box_f1(empty, boxes)["box_f1"] == 0.0
    assert text_boxes.box_f1(boxes, empty)["box_f1"] == 0.0


def test_box_f1_partial_case_by_hand():
    # image 0: reference A, B; found A exactly, B shifted by 5 (IoU 1/3 < 0.5, no match)
    #   and a stray box. image 1: reference C; found C shifted by 2 (IoU 80/120 = 2/3).
    # image 2: neither side has a box.
    reference = [np.stack([_square(0, 0), _square(30, 0)]), np.stack([_square(0, 30)]),
                 np.zeros((0, 4, 2), np.float32)]
    found = [np.stack([_square(0, 0), _square(35, 0), _square(80, 80)]),
             np.stack([_square(2, 30)]), np.zeros((0, 4, 2), np.float32)]
    result = text_boxes.box_f1(found, reference)
    precision, recall = 2 / 4, 2 / 3                 # 2 matches, 4 found, 3 expected
    assert result["matched_boxes"] == 2 and result["boxes"] == 4
    assert result["reference_boxes"] == 3
    assert result["box_precision"] == pytest.approx(precision)
    assert result["box_recall"] == pytest.approx(recall)
    assert result["box_f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_matching_is_one_to_one_and_prefers_the_higher_iou():
    # Two found boxes overlap one reference box (IoU 2/3 and 0.8181...): one match only.
    reference = [np.stack([_square(0, 0)])]
    found = [np.stack([_square(2, 0), _square(1, 0)])]
    result = text_boxes.box_f1(found, reference)
    assert result["matched_boxes"] == 1
    assert result["box_precision"] == pytest.approx(0.5) and result["box_recall"] == 1.0
    # Greedy by IoU: B equals R1 (IoU 1), A is 3 px from both R1 and R2 (IoU 7/13 each),
    # B and R2 share 4/16 (0.25). Highest first: B-R1, then A-R2, 2 matches; taking pairs
    # in list order (R1 with the first box over 0.5, A) would leave B and R2 unmatched.
    found = np.stack([_square(3, 0), _square(0, 0)])
    assert text_boxes.match_count(found, np.stack([_square(0, 0), _square(6, 0)])) == 2


@pytest.mark.slow
def test_jax_detector_boxes_equal_onnxruntime_boxes_on_real_images():
    """The imported PP-OCRv4 detector against onnxruntime running the original ONNX file on
    32 held-out real images at 320x320: the same DB boxes (16 of them, on 7 images)."""
    import jax
    import onnxruntime as ort
    from data import real_images
    from models import real_models
    try:
        path = real_models.path("ppocr_det_v4")
    except real_models.ModelNotFetched as error:
        pytest.skip(str(error))
    images = real_images.load("evaluation", size=(320, 320), limit=32)
    x = real_models.preprocess("ppocr_det_v4", images)
    fn, variables, _ = real_models.load("ppocr_det_v4", (8, 3, 320, 320))
    run = jax.jit(fn)
    ours = np.concatenate([np.asarray(run(variables, x[i:i + 8])) for i in range(0, 32, 8)])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = session.run(None, {session.get_inputs()[0].name: x})[0]
    result = text_boxes.box_f1_of_maps(ours, reference)
    assert result["reference_boxes"] >= 10, "the images must hold text for this to say much"
    assert result["box_f1"] == 1.0, result
    ours_boxes = text_boxes.boxes_from_maps(ours)
    for mine, theirs in zip(ours_boxes, text_boxes.boxes_from_maps(reference)):
        for box in theirs:
            assert max(text_boxes.polygon_iou(box, m) for m in mine) > 0.95
