"""Generate the embedded demo dataset: COCO instance segmentation + ADE20K-style semantic maps.

    python tools/make_demo_data.py [--out data/demo] [--train 96] [--val 24] [--seed 0]

Deterministic from the seed. Each scene is a cluttered background (gradient, blobs, lines,
noise) with 2-6 objects of four classes that differ in shape, texture and hue (striped reddish
discs, checkered bluish boxes, dotted yellowish triangles, plain greenish stars; saturation and
brightness vary), of varied size and aspect ratio, overlapping each other, on images of varied
sizes. Written as real files:

    OUT/coco/{train,val}/*.jpg, OUT/coco/annotations/instances_{train,val}.json
        polygons of each object's *visible* region (occlusion applied), bbox, area
    OUT/ade/images/{training,validation}/*.jpg, OUT/ade/annotations/{training,validation}/*.png
        label maps in the ADE20K convention: 0 = unlabeled (a thin band on object outlines),
        1 = background, 2.. = the object classes; with reduce_zero_label=True they become
        255 (ignored), 0 (background), 1.. (classes).
"""
import argparse
import json
import math
import os

import cv2
import numpy as np
from mmengine.utils import track_iter_progress

CLASSES = ('disc', 'box', 'triangle', 'star')
SEG_CLASSES = ('background',) + CLASSES
#: Class colours (RGB), background first: objects are painted in hues near their class colour.
PALETTE = [(70, 70, 70), (230, 60, 60), (60, 160, 230), (240, 200, 40), (90, 200, 90)]
#: Each class is painted in hues within this distance (of 256) of its palette colour.
HUE_JITTER = 12
#: The palette hue of each object class (OpenCV's full 0-255 hue scale).
CLASS_HUES = [int(cv2.cvtColor(np.uint8([[rgb]]), cv2.COLOR_RGB2HSV_FULL)[0, 0, 0])
              for rgb in PALETTE[1:]]
MIN_VISIBLE = 0.35  # objects less visible than this (fraction of their area) are dropped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='data/demo')
    parser.add_argument('--train', type=int, default=96, help='training scenes')
    parser.add_argument('--val', type=int, default=24, help='validation scenes')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.train < 1 or args.val < 1:
        parser.error('--train and --val must be at least 1')
    make_dataset(args.out, args.train, args.val, args.seed)
    print(f'wrote {args.train} + {args.val} scenes to {args.out}/coco and {args.out}/ade')


def make_dataset(out, n_train, n_val, seed=0, progress=True):
    rng = np.random.default_rng(seed)
    for split, ade_split, count in (('train', 'training', n_train),
                                    ('val', 'validation', n_val)):
        folders = dict(coco=os.path.join(out, 'coco', split),
                       ade_img=os.path.join(out, 'ade', 'images', ade_split),
                       ade_ann=os.path.join(out, 'ade', 'annotations', ade_split))
        for folder in folders.values():
            os.makedirs(folder, exist_ok=True)
        os.makedirs(os.path.join(out, 'coco', 'annotations'), exist_ok=True)
        images, annotations = [], []
        indices = track_iter_progress(range(count)) if progress else range(count)
        if progress:
            print(f'{split}: {count} scenes')
        for i in indices:
            name = f'{split}_{i:04d}'
            image, objects, label_map = make_scene(rng)
            _write_jpeg(os.path.join(folders['coco'], name + '.jpg'), image)
            _write_jpeg(os.path.join(folders['ade_img'], name + '.jpg'), image)
            cv2.imwrite(os.path.join(folders['ade_ann'], name + '.png'), label_map)
            image_id = len(images) + 1
            images.append(dict(id=image_id, file_name=name + '.jpg', height=image.shape[0],
                               width=image.shape[1]))
            for obj in objects:
                annotations.append(dict(obj, id=len(annotations) + 1, image_id=image_id,
                                        iscrowd=0))
        coco = dict(images=images, annotations=annotations,
                    categories=[dict(id=i + 1, name=n) for i, n in enumerate(CLASSES)])
        with open(os.path.join(out, 'coco', 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(coco, f)


def make_scene(rng):
    """One scene: (BGR image, COCO annotations without ids, ADE label map)."""
    h, w = int(rng.integers(224, 361)), int(rng.integers(224, 417))
    image = _background(rng, h, w)
    owner = np.zeros((h, w), np.int32)  # which object (1-based) is on top at each pixel
    shapes = []
    for index in range(1, int(rng.integers(2, 7)) + 1):
        cls = int(rng.integers(len(CLASSES)))
        polygon = _shape(rng, cls, h, w)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [polygon], 1)
        if mask.sum() < 64:
            continue
        _paint(rng, image, mask.astype(bool), cls)
        owner[mask.astype(bool)] = index
        shapes.append((index, cls, int(mask.sum())))

    label_map = np.ones((h, w), np.uint8)  # 1 = background
    objects = []
    for index, cls, full_area in shapes:
        visible = (owner == index).astype(np.uint8)
        area = int(visible.sum())
        if area < MIN_VISIBLE * full_area or area < 48:
            label_map[visible.astype(bool)] = 0  # too occluded to label: unlabeled
            continue
        label_map[visible.astype(bool)] = cls + 2
        contours, _ = cv2.findContours(visible, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        if not polygons:
            continue
        x, y, bw, bh = cv2.boundingRect(visible)
        objects.append(dict(category_id=cls + 1, segmentation=polygons, area=float(area),
                            bbox=[float(x), float(y), float(bw), float(bh)]))
    # ADE-style unlabeled band along object outlines
    edges = cv2.morphologyEx(owner.astype(np.uint8), cv2.MORPH_GRADIENT,
                             np.ones((3, 3), np.uint8)) > 0
    label_map[edges] = 0
    return image, objects, label_map


def _background(rng, h, w):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xs / w + np.sin(angle) * ys / h)
    base = rng.uniform(70, 170, 3)
    image = base[None, None, :] + 40 * ramp[..., None] * rng.uniform(-1, 1, 3)
    for _ in range(int(rng.integers(6, 14))):  # clutter: blobs and lines in muted colours
        colour = (base + rng.uniform(-45, 45, 3)).tolist()
        if rng.random() < 0.6:
            centre = (int(rng.integers(w)), int(rng.integers(h)))
            axes = (int(rng.integers(8, 40)), int(rng.integers(8, 40)))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            p1 = (int(rng.integers(w)), int(rng.integers(h)))
            p2 = (int(rng.integers(w)), int(rng.integers(h)))
            cv2.line(image, p1, p2, colour, int(rng.integers(1, 4)))
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape(rng, cls, h, w):
    size = rng.uniform(0.12, 0.4) * min(h, w)
    aspect = rng.uniform(0.6, 1.6)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    rot = rng.uniform(0, 2 * math.pi)
    if CLASSES[cls] == 'disc':
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * 0.5
    elif CLASSES[cls] == 'box':
        pts = np.array([[-.5, -.5], [.5, -.5], [.5, .5], [-.5, .5]])
    elif CLASSES[cls] == 'triangle':
        t = np.array([0, 2 * math.pi / 3, 4 * math.pi / 3]) + math.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], 1) * 0.6
    else:  # star
        t = np.linspace(0, 2 * math.pi, 10, endpoint=False)
        radius = np.where(np.arange(10) % 2 == 0, 0.6, 0.25)
        pts = np.stack([np.cos(t) * radius, np.sin(t) * radius], 1)
    pts = pts * np.array([size * aspect, size / aspect])
    rotation = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    pts = pts @ rotation.T + np.array([cx, cy])
    return np.round(pts).astype(np.int32)


def _paint(rng, image, mask, cls):
    """Fill ``mask`` with the class texture, in a colour of the class's hue family."""
    h, w = mask.shape
    ys, xs = np.mgrid[0:h, 0:w]
    colour = _class_colour(rng, cls)
    other = 255 - colour
    name = CLASSES[cls]
    period = int(rng.integers(5, 10))
    if name == 'disc':
        pattern = ((xs + ys) // period) % 2 == 0  # diagonal stripes
    elif name == 'box':
        pattern = ((xs // period) + (ys // period)) % 2 == 0  # checkerboard
    elif name == 'triangle':
        pattern = ((xs % period) < 2) & ((ys % period) < 2)  # dots
    else:
        pattern = np.zeros_like(mask)  # plain
    texture = np.where(pattern[..., None], other, colour)
    texture = texture + rng.normal(0, 8, texture.shape)
    image[mask] = np.clip(texture[mask], 0, 255).astype(np.uint8)


def _class_colour(rng, cls):
    """A BGR colour near the class's palette hue, of random saturation and brightness."""
    hsv = np.uint8([[[(CLASS_HUES[cls] + int(rng.integers(-HUE_JITTER, HUE_JITTER + 1))) % 256,
                      rng.integers(110, 256), rng.integers(110, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR_FULL)[0, 0].astype(float)


def _write_jpeg(path, image):
    if not cv2.imwrite(path, image, [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise OSError(f'could not write {path}')


if __name__ == '__main__':
    main()
