"""Text boxes from a DB text detector's probability map, and box F1 between two detectors.

Why: a text detector is used through its boxes, not its map. Issue 17 measures the
compressed PP-OCRv4 detector against the original by text-map IoU *and* by box F1 after the
DB post-processing (goal F1 >= 0.95 at 2x): a map can lose a few border pixels everywhere
(low IoU) and still give the same boxes, or keep most pixels and merge two lines into one
box. This is an evaluation utility for experiments, not a compression method.

``boxes_from_map`` follows PaddleOCR's ``DBPostProcess`` (ppocr/postprocess/db_postprocess.py,
score_mode "fast", box_type "quad", no dilation) with the defaults of its inference tool
(tools/infer/utility.py: det_db_thresh 0.3, det_db_box_thresh 0.6, det_db_unclip_ratio 1.5;
max_candidates 1000 and min_size 3 in DBPostProcess):

1. binary map = probability > ``thresh``;
2. contours of the binary map (``cv2.findContours``, RETR_LIST, as PaddleOCR: a ring's hole
   gives a contour too), the first ``max_candidates``;
3. per contour its minimum-area rotated rectangle; dropped when its short side < ``min_size``;
4. box score = mean probability inside that rectangle (rasterised at integer corners, as
   ``box_score_fast``); dropped when < ``box_thresh``;
5. unclip: the rectangle grown by distance ``area * unclip_ratio / perimeter`` on every side.
   PaddleOCR offsets the polygon with pyclipper (round joins) and takes the minimum-area
   rectangle of the result again; for a rectangle that is exactly the rectangle grown by the
   distance (the round corners lie inside it and the straight sides touch it), so no
   pyclipper is needed. Dropped when its short side < ``min_size + 2``;
6. corners clipped to the image (the map is at input resolution, so these are input-image
   coordinates).

``box_f1`` matches two sets of boxes image by image, one to one, greedily by polygon IoU
(highest first, IoU >= 0.5: the ICDAR 2015 criterion) and sums matches, boxes of each side
over the images before taking precision, recall and F1.
"""
from typing import Dict, List, Sequence

import cv2
import numpy as np

THRESH = 0.3            # det_db_thresh
BOX_THRESH = 0.6        # det_db_box_thresh
UNCLIP_RATIO = 1.5      # det_db_unclip_ratio
MAX_CANDIDATES = 1000   # DBPostProcess max_candidates
MIN_SIZE = 3            # DBPostProcess min_size (short side, px)
MATCH_IOU = 0.5         # ICDAR 2015: a detection matches a reference box at IoU >= 0.5


def _rectangle_corners(rect) -> np.ndarray:
    """(4, 2) float32 corners of an OpenCV rotated rectangle ((cx, cy), (w, h), angle)."""
    return cv2.boxPoints(rect).astype(np.float32)


def _box_score(probability: np.ndarray, corners: np.ndarray) -> float:
    """Mean probability inside the polygon ``corners`` rasterised at integer corners
    (PaddleOCR's ``box_score_fast``)."""
    h, w = probability.shape
    x_min = int(np.clip(np.floor(corners[:, 0].min()), 0, w - 1))
    x_max = int(np.clip(np.ceil(corners[:, 0].max()), 0, w - 1))
    y_min = int(np.clip(np.floor(corners[:, 1].min()), 0, h - 1))
    y_max = int(np.clip(np.ceil(corners[:, 1].max()), 0, h - 1))
    mask = np.zeros((y_max - y_min + 1, x_max - x_min + 1), np.uint8)
    shifted = corners - np.array([x_min, y_min], np.float32)
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2).astype(np.int32), 1)
    return float(cv2.mean(probability[y_min:y_max + 1, x_min:x_max + 1], mask)[0])


def unclip(rect, unclip_ratio: float = UNCLIP_RATIO):
    """The rotated rectangle grown by ``area * unclip_ratio / perimeter`` on every side."""
    (cx, cy), (w, h), angle = rect
    distance = w * h * unclip_ratio / max(2.0 * (w + h), 1e-12)
    return (cx, cy), (w + 2 * distance, h + 2 * distance), angle


def boxes_from_map(probability: np.ndarray, thresh: float = THRESH,
                   box_thresh: float = BOX_THRESH, unclip_ratio: float = UNCLIP_RATIO,
                   max_candidates: int = MAX_CANDIDATES, min_size: float = MIN_SIZE
                   ) -> Dict[str, np.ndarray]:
    """Text boxes of one (H, W) probability map: ``{"boxes": (K, 4, 2) float32 corners
    (x, y) in image pixels, "scores": (K,)}`` (see the module docstring for the steps)."""
    probability = np.asarray(probability, np.float32)
    if probability.ndim != 2:
        raise ValueError(f"boxes_from_map takes one (H, W) map, got shape {probability.shape}")
    h, w = probability.shape
    binary = (probability > thresh).astype(np.uint8) * 255
    contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes, scores = [], []
    for contour in contours[:max_candidates]:
        rect = cv2.minAreaRect(contour)
        if min(rect[1]) < min_size:
            continue
        score = _box_score(probability, _rectangle_corners(rect))
        if score < box_thresh:
            continue
        grown = unclip(rect, unclip_ratio)
        if min(grown[1]) < min_size + 2:
            continue
        corners = _rectangle_corners(grown)
        corners[:, 0] = np.clip(corners[:, 0], 0, w)
        corners[:, 1] = np.clip(corners[:, 1], 0, h)
        boxes.append(corners)
        scores.append(score)
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4, 2),
            "scores": np.asarray(scores, np.float32)}


def single_channel_maps(maps) -> np.ndarray:
    """(N, H, W) maps from (N, H, W), (N, 1, H, W) or (N, H, W, 1) detector outputs."""
    maps = np.asarray(maps)
    if maps.ndim == 4 and maps.shape[1] == 1:
        return maps[:, 0]
    if maps.ndim == 4 and maps.shape[3] == 1:
        return maps[..., 0]
    if maps.ndim == 3:
        return maps
    raise ValueError(f"expected one-channel probability maps, got shape {maps.shape}")


def boxes_from_maps(maps, **settings) -> List[np.ndarray]:
    """Per image its (K, 4, 2) boxes (``boxes_from_map`` with ``settings``)."""
    return [boxes_from_map(m, **settings)["boxes"] for m in single_channel_maps(maps)]


def polygon_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two convex polygons given as (K, 2) corners."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    area_a, area_b = abs(cv2.contourArea(a)), abs(cv2.contourArea(b))
    intersection, _ = cv2.intersectConvexConvex(a, b)
    union = area_a + area_b - intersection
    return float(intersection / union) if union > 0 else 0.0


def match_count(boxes: np.ndarray, reference: np.ndarray, min_iou: float = MATCH_IOU) -> int:
    """One-to-one matches between two box sets, taken greedily in order of IoU (highest
    first) while the IoU is at least ``min_iou``."""
    pairs = sorted(((polygon_iou(p, r), i, j) for i, p in enumerate(boxes)
                    for j, r in enumerate(reference)), key=lambda t: -t[0])
    used_boxes, used_reference = set(), set()
    for iou, i, j in pairs:
        if iou < min_iou:
            break
        if i not in used_boxes and j not in used_reference:
            used_boxes.add(i)
            used_reference.add(j)
    return len(used_boxes)


def box_f1(boxes: Sequence[np.ndarray], reference: Sequence[np.ndarray],
           min_iou: float = MATCH_IOU) -> Dict[str, float]:
    """Precision, recall and F1 of ``boxes`` against ``reference`` (per image box lists),
    with matches and box counts summed over the images. No box on either side on every
    image: all three are 1 (nothing to find, nothing found); no box on one side only:
    that side's ratio is 0."""
    if len(boxes) != len(reference):
        raise ValueError(f"{len(boxes)} images of boxes against {len(reference)}")
    matched = sum(match_count(b, r, min_iou) for b, r in zip(boxes, reference))
    found, expected = sum(len(b) for b in boxes), sum(len(r) for r in reference)
    if found == 0 and expected == 0:
        precision = recall = f1 = 1.0
    else:
        precision = matched / found if found else 0.0
        recall = matched / expected if expected else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"box_f1": f1, "box_precision": precision, "box_recall": recall,
            "matched_boxes": int(matched), "boxes": int(found), "reference_boxes": int(expected)}


def box_f1_of_maps(maps, reference_maps, **settings) -> Dict[str, float]:
    """``box_f1`` of the DB boxes of two models' probability maps on the same images."""
    return box_f1(boxes_from_maps(maps, **settings), boxes_from_maps(reference_maps, **settings))
