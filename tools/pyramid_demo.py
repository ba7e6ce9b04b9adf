"""Run the SwinV2 backbone of the example mmdet config on an embedded picture.

    python tools/pyramid_demo.py [--config CONFIG] [--out-dir outputs/demo]

Builds the detector's backbone through MMDetection's registry exactly as ``tools/train.py``
would, draws a deterministic demo picture (no download), runs it at a classification size, an
odd size and a COCO-like detection size, and prints each output's shape and the time taken.
Writes ``pyramid.json`` with the same figures. (The end-to-end training demo is tracked
separately; this shows the installed stack and the backbone working.)
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(__file__), '..')
sys.path.insert(0, ROOT)


def demo_picture(h, w):
    """Three overlapping shapes with stripes on a gradient: a fixed, download-free test image."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing='ij')
    img = torch.stack([0.3 + 0.4 * ys, 0.2 + 0.3 * xs, 0.5 - 0.2 * ys * xs])
    disc = ((ys - 0.4) ** 2 + (xs - 0.35) ** 2) < 0.05
    box = (ys > 0.5) & (ys < 0.9) & (xs > 0.55) & (xs < 0.9)
    stripes = torch.sin(60 * xs) > 0
    img[0][disc] = 0.9
    img[1][box & stripes] = 0.8
    return (img - 0.45) / 0.25  # roughly ImageNet-normalised


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=os.path.join(
        ROOT, 'configs', 'examples', 'mask-rcnn_swinv2-t-w8_fpn_1x_coco.py'))
    parser.add_argument('--out-dir', default='outputs/demo')
    args = parser.parse_args()

    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmdet.registry import MODELS

    cfg = Config.fromfile(args.config)
    with DefaultScope.overwrite_default_scope('mmdet'):
        backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    backbone.eval()
    print(f'built {type(backbone).__name__} from {os.path.relpath(args.config)} '
          f'({sum(p.numel() for p in backbone.parameters()) / 1e6:.1f} M parameters)')

    picture = demo_picture(800, 1333)
    report = []
    for h, w in [(256, 256), (333, 517), (800, 1333)]:
        x = F.interpolate(picture[None], size=(h, w), mode='bilinear', align_corners=False)
        start = time.perf_counter()
        with torch.no_grad():
            outs = backbone(x)
        seconds = time.perf_counter() - start
        shapes = [list(o.shape) for o in outs]
        finite = all(bool(torch.isfinite(o).all()) for o in outs)
        print(f'  input {h}x{w}: {seconds:.2f} s, outputs {shapes}, finite: {finite}')
        report.append(dict(input=[h, w], seconds=seconds, outputs=shapes, finite=finite))
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, 'pyramid.json')
    with open(path, 'w') as f:
        json.dump(report, f, indent=2)
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
