"""Run a trained detector or segmentor on images, folders of images and videos.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] [--out-dir DIR]
                          [--device cpu|cuda] [--pred-score-thr 0.3] [--batch-size N]
                          [--cfg-options KEY=VALUE ...]

Detection (MMDetection) or segmentation (MMSegmentation) is told apart by the config's
``default_scope``, as in tools/train.py and tools/test.py; the work is done by MMDetection's
``DetInferencer`` / MMSegmentation's ``MMSegInferencer``. For each input ``NAME``, ``--out-dir``
(default ``outputs/infer``) gets:

- ``vis/NAME.jpg``: the picture with the predictions drawn (for a video: ``vis/NAME.mp4``);
- ``preds/NAME.json``: the predictions — detection: ``labels``, ``scores``, ``bboxes`` (x1, y1,
  x2, y2 in input pixels) and ``masks`` (COCO RLE) when the model predicts them, plus the class
  names; segmentation: the classes present with their pixel fractions, and the label map in
  ``preds/NAME.png`` (one class index per pixel). For a video, one entry per frame (for
  segmentation: the classes present in it).

An input that does not exist, cannot be read, or a folder without images is reported with its
path; the other inputs are still processed, and the exit status is 1 if any input failed.
"""
import argparse
import itertools
import json
import os
import os.path as osp
import sys
from typing import Iterator, List, Tuple

sys.path.insert(0, osp.join(osp.dirname(__file__), '..'))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from rich.progress import Progress  # noqa: E402

from mmswinv2.checkpoints import mmengine_checkpoints_allowed  # noqa: E402
from mmswinv2.launch import add_repo_to_path, codebase_of, load_config  # noqa: E402

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Predict on images, folders and videos')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('inputs', nargs='+', help='image files, folders of images, video files')
    parser.add_argument('--out-dir', default='outputs/infer', help='where to write results')
    parser.add_argument('--device', choices=['cpu', 'cuda'],
                        help='default: cuda when available, else cpu')
    parser.add_argument('--pred-score-thr', type=float, default=0.3,
                        help='detection: draw and keep predictions scoring at least this')
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward pass')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.test_cfg.mode=slide')
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f'--batch-size must be positive, got {args.batch_size}')
    if not 0 <= args.pred_score_thr <= 1:
        parser.error(f'--pred-score-thr must be in [0, 1], got {args.pred_score_thr}')
    return args


def expand_inputs(paths: List[str]) -> Tuple[List[Tuple[str, str]], List[str]]:
    """``[(kind, path)]`` with kind 'image' or 'video' (folders expanded, sorted), and the
    errors of the paths that cannot be used."""
    items, errors = [], []
    for path in paths:
        if osp.isdir(path):
            found = [(kind, osp.join(path, name)) for name in sorted(os.listdir(path))
                     if (kind := _kind(name)) is not None]
            if not found:
                errors.append(f'{path}: no images ({", ".join(IMAGE_EXTENSIONS)}) or videos '
                              f'({", ".join(VIDEO_EXTENSIONS)}) in this folder')
            items.extend(found)
        elif not osp.exists(path):
            errors.append(f'{path}: no such file or folder')
        else:
            items.append((_kind(path) or 'image', path))
    return items, errors


def _kind(name: str):
    ext = osp.splitext(name)[1].lower()
    return 'image' if ext in IMAGE_EXTENSIONS else 'video' if ext in VIDEO_EXTENSIONS else None


def build_inferencer(cfg, codebase: str, checkpoint: str, device: str):
    with mmengine_checkpoints_allowed():
        if codebase == 'mmdet':
            from mmdet.apis import DetInferencer
            inferencer = DetInferencer(model=cfg, weights=checkpoint, device=device)
        else:
            from mmseg.apis import MMSegInferencer
            inferencer = MMSegInferencer(model=cfg, weights=checkpoint, device=device)
    inferencer.show_progress = False  # this tool shows one bar over all inputs
    return inferencer


class Predictor:
    """One inferencer call on a batch of BGR images -> (pictures to save, JSON-ready dicts)."""

    def __init__(self, inferencer, codebase: str, score_thr: float):
        self.inferencer = inferencer
        self.codebase = codebase
        self.score_thr = score_thr
        self.classes = list(inferencer.model.dataset_meta.get('classes', []))

    def __call__(self, images: List[np.ndarray]) -> Tuple[List[np.ndarray], List[dict]]:
        if self.codebase == 'mmdet':
            out = self.inferencer(images, batch_size=len(images), return_vis=True,
                                  no_save_vis=True, pred_score_thr=self.score_thr)
            pictures, predictions = out['visualization'], out['predictions']
        else:  # mmseg stacks a batch into one tensor: one call per run of equal sizes
            pictures, predictions = [], []
            for _, group in itertools.groupby(images, key=lambda image: image.shape):
                group = list(group)
                out = self.inferencer(group, batch_size=len(group), return_vis=True)
                pictures += _as_list(out['visualization'])
                predictions += _as_list(out['predictions'])
        return ([cv2.cvtColor(p, cv2.COLOR_RGB2BGR) for p in pictures],
                [self._to_json(p) for p in predictions])

    def _to_json(self, prediction) -> dict:
        if self.codebase == 'mmdet':
            keep = [i for i, s in enumerate(prediction['scores']) if s >= self.score_thr]
            result = {k: [v[i] for i in keep] for k, v in prediction.items()
                      if isinstance(v, list) and len(v) == len(prediction['scores'])}
            result['classes'] = [self.classes[label] for label in result['labels']]
            result['pred_score_thr'] = self.score_thr
            return result
        labels, counts = np.unique(prediction, return_counts=True)
        return dict(label_map=prediction, classes=[
            dict(label=int(label), name=self.classes[label] if label < len(self.classes) else '',
                 fraction=round(float(count) / prediction.size, 6))
            for label, count in zip(labels, counts)])


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _batches(items: List, size: int) -> Iterator[List]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def read_image(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f'{path}: cannot be read as an image')
    return image


def write_prediction(out_dir: str, name: str, prediction: dict) -> None:
    label_map = prediction.pop('label_map', None)
    if label_map is not None:
        cv2.imwrite(osp.join(out_dir, 'preds', f'{name}.png'), label_map.astype(np.uint8))
        prediction['label_map'] = f'{name}.png'
    with open(osp.join(out_dir, 'preds', f'{name}.json'), 'w') as f:
        json.dump(prediction, f, indent=1)


def process_images(predictor, paths: List[str], batch_size: int, out_dir: str, progress,
                   errors: List[str]) -> int:
    """Predict ``paths`` in batches (read one batch at a time); return how many succeeded."""
    done = 0
    for batch in _batches(paths, batch_size):
        readable = []
        for path in batch:
            try:
                readable.append((path, read_image(path)))
            except ValueError as err:
                errors.append(str(err))
                progress()
        if not readable:
            continue
        pictures, predictions = predictor([image for _, image in readable])
        for (path, _), picture, prediction in zip(readable, pictures, predictions):
            name = osp.splitext(osp.basename(path))[0]
            cv2.imwrite(osp.join(out_dir, 'vis', f'{name}.jpg'), picture)
            write_prediction(out_dir, name, prediction)
            done += 1
            progress()
    return done


def process_video(predictor, path: str, batch_size: int, out_dir: str) -> int:
    """Predict every frame; write the drawn video and one JSON with a prediction per frame."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ValueError(f'{path}: cannot be read as a video')
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    name = osp.splitext(osp.basename(path))[0]
    writer, frames, per_frame = None, [], []
    try:
        while True:
            ok, frame = capture.read()
            if ok:
                frames.append(frame)
            if frames and (len(frames) == batch_size or not ok):
                pictures, predictions = predictor(frames)
                for picture in pictures:
                    if writer is None:
                        h, w = picture.shape[:2]
                        writer = cv2.VideoWriter(osp.join(out_dir, 'vis', f'{name}.mp4'),
                                                 cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
                    writer.write(picture)
                for prediction in predictions:
                    prediction.pop('label_map', None)  # per frame: the classes present only
                    per_frame.append(prediction)
                frames = []
            if not ok:
                break
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if not per_frame:
        raise ValueError(f'{path}: no frame could be read from this video')
    with open(osp.join(out_dir, 'preds', f'{name}.json'), 'w') as f:
        json.dump(dict(video=path, fps=fps, frames=per_frame), f)
    return len(per_frame)


def main(argv=None) -> int:
    args = parse_args(argv)
    add_repo_to_path()
    cfg = load_config(args.config, args.cfg_options, work_dir=None, launcher='none')
    codebase = codebase_of(cfg, args.config)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    items, errors = expand_inputs(args.inputs)
    predictor = Predictor(build_inferencer(cfg, codebase, args.checkpoint, device), codebase,
                          args.pred_score_thr)
    for sub in ('vis', 'preds'):
        os.makedirs(osp.join(args.out_dir, sub), exist_ok=True)
    images = [path for kind, path in items if kind == 'image']
    videos = [path for kind, path in items if kind == 'video']
    done = 0
    with Progress() as bar:
        task = bar.add_task('Inference', total=len(images) + len(videos))
        done += process_images(predictor, images, args.batch_size, args.out_dir,
                               lambda: bar.advance(task), errors)
        for path in videos:
            try:
                frames = process_video(predictor, path, args.batch_size, args.out_dir)
                done += 1
                print(f'{path}: {frames} frames')
            except ValueError as err:
                errors.append(str(err))
            bar.advance(task)
    print(f'{done} of {len(images) + len(videos)} inputs done; results in {args.out_dir}/vis '
          f'and {args.out_dir}/preds')
    for error in errors:
        print(f'error: {error}', file=sys.stderr)
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
