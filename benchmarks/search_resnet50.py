"""A Spatial search at real scale: ResNet-50 at 224x224 on N calibration images, one process, end
to end (dense predictions, dense cache, search, verification), with the time by phase and the
work as a multiple of one full pass over the calibration images.

    python benchmarks/search_resnet50.py --images 512 --max-cache-memory 8GiB --checkpoint /tmp/r50.json
    python benchmarks/search_resnet50.py --images 512 --search-images 64 --first-level first_order

No ImageNet and no pretrained weights are reachable offline. The network is torchvision's
ResNet-50 at its seeded initialization, with BatchNorm statistics recomputed on other crops of
the same photos (so each ReLU zeroes about half its inputs, as in a trained network) and, by
default, its classifier refit to 10 k-means clusters of its pooled features (``--head
clusters``: logits with real margins; ``--head seeded`` keeps torchvision's), scored by
agreement with its own dense predictions. The images are 224x224 crops, at random places,
scales and flips, of scikit-learn's two sample photographs. ``--model`` takes a user's own
.pt2 and ``--data`` their images (a folder or .npz; its calib split is used) instead.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from sparsify_cnn.data.dataset import Dataset, Split
from sparsify_cnn.model_io import LoadedModel, load_model
from sparsify_cnn.option_types import format_bytes, parse_bytes
from sparsify_cnn.pipeline import Prepared
from sparsify_cnn.progress import phases_line
from sparsify_cnn.techniques.spatial.job import optimize_spatial
from sparsify_cnn.techniques.spatial.search import MODES, SearchConfig
from sparsify_cnn.transform.capture import capture

SIZE = 224
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def photo_crops(count: int, seed: int) -> torch.Tensor:
    """``count`` normalized 224x224 crops of the sample photos (random place, scale, flip)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(image) for image in load_sample_images().images]
    rng = np.random.default_rng(seed)
    crops = np.empty((count, 3, SIZE, SIZE), dtype=np.float32)
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(SIZE // 2, min(photo.size)))
        left, top = int(rng.integers(0, photo.width - side)), int(rng.integers(0, photo.height - side))
        crop = photo.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.BILINEAR)
        pixels = np.asarray(crop, dtype=np.float32) / 255
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        crops[i] = ((pixels - MEAN) / STD).transpose(2, 0, 1)
    return torch.from_numpy(crops)


def initialized_resnet50(statistics: torch.Tensor) -> torch.nn.Module:
    """torchvision's ResNet-50 (seed 0) with BatchNorm statistics computed on ``statistics``."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches
    model.train()
    with torch.no_grad():
        for batch in statistics.split(32):
            model(batch)
    return model.eval()


def cluster_head(model: torch.nn.Module, images: torch.Tensor, classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """``model`` with its classifier refit to ``classes`` k-means clusters of its own pooled
    features on ``images``: a head that separates what the backbone tells apart, so most images
    sit well inside their class, as in a trained network (the seeded head's logits lie close
    together, and any change to an activation flips some of them)."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression

    features = []
    model.fc, head = torch.nn.Identity(), model.fc
    with torch.no_grad():
        for batch in images.split(32):
            features.append(model(batch))
    pooled = torch.cat(features).double().numpy()
    clusters = KMeans(classes, n_init=10, random_state=seed).fit_predict(pooled)
    fit = LogisticRegression(max_iter=2000).fit(pooled, clusters)
    head = torch.nn.Linear(head.in_features, classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(fit.coef_))
        head.bias.copy_(torch.from_numpy(fit.intercept_))
    model.fc = head
    return model


def prepared_job(args) -> Prepared:
    if args.data:
        from sparsify_cnn.data import load_data

        data = load_data(args.data, (3, SIZE, SIZE))
        calib, test = data.calib.x[: args.images], data.test.x[: args.test_images]
    else:
        images = photo_crops(args.images + args.test_images, seed=1)
        calib, test = images[: args.images], images[args.images : args.images + args.test_images]
    if args.model:
        loaded = load_model(args.model)
    else:
        model = initialized_resnet50(photo_crops(64, seed=2))
        if args.head == "clusters":
            model = cluster_head(model, photo_crops(args.head_images, seed=3))
        loaded = LoadedModel(model, f"torchvision:resnet50 ({args.head} head)", "zoo", (3, SIZE, SIZE))
    label_free = Split(calib[:0], None)
    data = Dataset("photo crops", label_free, Split(calib, None), Split(test, None), None)
    return Prepared(loaded, capture(loaded.module, (1, 3, SIZE, SIZE)), data)


def progress(phase, item, done, total, **extra):
    print(f"\r{time.strftime('%H:%M:%S')} {phase}: {item} ({done}/{total})\033[K", end="", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="calibration images")
    parser.add_argument("--test-images", type=int, default=64)
    parser.add_argument("--mode", default="uniform_filter", choices=MODES)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--max-cache-memory", default="8GiB")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--search-images", type=int, help="score layer options on this many of the images")
    parser.add_argument("--first-level", default="exact", choices=["exact", "first_order"])
    parser.add_argument("--max-risk", type=float, help="per-layer risk budget (SearchConfig.max_risk)")
    parser.add_argument("--checkpoint", help="search checkpoint (resumed when present)")
    parser.add_argument("--head", default="clusters", choices=["clusters", "seeded"],
                        help="the initialized ResNet-50's classifier: refit to clusters of its features, or as seeded")
    parser.add_argument("--head-images", type=int, default=512, help="photo crops the clusters are fitted on")
    parser.add_argument("--model", help="a .pt2 to search instead of the initialized ResNet-50")
    parser.add_argument("--data", help="images (folder or .npz) instead of the photo crops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    prepared = prepared_job(args)
    setup = time.perf_counter() - start
    config = SearchConfig(mode=args.mode, epsilon=args.epsilon, batch_size=args.batch_size,
                          search_images=args.search_images, first_level=args.first_level,
                          max_risk=args.max_risk)  # fmt: skip
    result = optimize_spatial(prepared, search=config, metric="agreement", checkpoint=args.checkpoint,
                              progress=progress, max_cache_bytes=parse_bytes(args.max_cache_memory))  # fmt: skip
    print(file=sys.stderr)
    total = sum(result.phases.values())
    one_pass = result.phases["dense predictions"]  # the dense model once over the calibration images
    search, cache = result.search, result.search.cache
    print(f"{prepared.loaded.source} at 224x224, {args.images} calibration images (layer options on "
          f"{search.search_images}), {args.mode}, {args.first_level} first level, epsilon "
          f"{args.epsilon} agreement, max risk {args.max_risk}, {args.threads} threads; setup (images, BatchNorm statistics, capture) {setup:.0f} s")  # fmt: skip
    print(f"end to end {total:.0f} s ({total / 60:.1f} min) = {total / one_pass:.0f} full passes of "
          f"{one_pass:.1f} s; work counted {search.work:.1f} passes, {search.candidates:,} of the seed's "
          f"{search.options:,} options evaluated, {search.suffix_images:,} suffix images")  # fmt: skip
    print(f"dense cache: at most {format_bytes(cache['peak_bytes'])}, {cache['groups']} groups, "
          f"{cache['recording_passes']} recording passes")  # fmt: skip
    print(f"MACs saved {100 * result.calib_macs_saved / result.dense.total_macs:.1f}% on calib; agreement "
          f"{search.accuracy:.4f} (budget {1 - args.epsilon:.2f})")  # fmt: skip
    print(f"time by phase: {phases_line(result.phases)}")


if __name__ == "__main__":
    main()
