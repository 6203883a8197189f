"""Writes tests/reference/augment.safetensors: torchvision's answers for the data pipeline tests.

Run from the repository root (needs torch, torchvision, numpy, Pillow, safetensors):
    python tests/reference/make_augment_fixtures.py

Contents (tensors; the case list is JSON in the file's metadata under "cases"):
- input.<name>: uint8 [H, W, 3] images: a 20x24 noise image salted with HSV edge cases (grey
  pixels, ties between channels, pure colours, black, white) and a real CIFAR-10 demo image.
- case.<name>: float32 [H, W, 3], torchvision.transforms.v2.functional applied with FIXED
  parameters (listed in the case's JSON entry) to the input converted to float (x / 255), CHW in
  torch, stored HWC.
- resize.<input>.<size>: uint8 [size, size, 3], the resize-on-load of an input (torchvision
  Resize(size) + CenterCrop(size) on the float image, rounded to uint8); input.tall is the noise
  image transposed.
- decode.<class>: uint8 [32, 32, 3], Pillow's decoding of the first test JPEG of each demo class
  (the reference for the Rust JPEG decoder).
- crop_stats.<config>: float64 statistics of 100,000 draws of torchvision's
  RandomResizedCrop.get_params: histograms of h, w, top, left and the mean area fraction.
"""
import json
import os

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as F
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import RandomResizedCrop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "reference", "augment.safetensors")
DEMO = os.path.join(ROOT, "data", "cifar10-demo", "test")
CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]


def noise_image():
    rng = np.random.default_rng(1234)
    img = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    edge = [
        (0, 0, 0), (255, 255, 255), (128, 128, 128), (7, 7, 7),  # grey: h and s are 0
        (255, 0, 0), (0, 255, 0), (0, 0, 255),  # pure colours
        (200, 200, 10), (10, 200, 200), (200, 10, 200),  # two channels tie for the maximum
        (200, 10, 10), (10, 200, 10), (10, 10, 200),  # two channels tie for the minimum
        (255, 128, 0), (1, 0, 0), (254, 255, 255),
    ]
    for k, px in enumerate(edge):
        img[k // 8, k % 8] = px
    return img


def cifar_image():
    return np.asarray(Image.open(os.path.join(DEMO, "cat", "0000.jpg")).convert("RGB"), dtype=np.uint8)


def to_float_chw(img):
    return torch.from_numpy(img.copy()).permute(2, 0, 1).float().div(255.0)


def to_hwc(t):
    return t.permute(1, 2, 0).contiguous()


def apply(x, case):
    op = case["op"]
    if op == "resized_crop":
        t, l, h, w = case["box"]
        return F.resized_crop(x, t, l, h, w, case["size"], antialias=case["antialias"])
    if op == "hflip":
        return F.horizontal_flip(x)
    if op == "brightness":
        return F.adjust_brightness(x, case["factor"])
    if op == "contrast":
        return F.adjust_contrast(x, case["factor"])
    if op == "saturation":
        return F.adjust_saturation(x, case["factor"])
    if op == "hue":
        return F.adjust_hue(x, case["factor"])
    if op == "grayscale":
        return F.rgb_to_grayscale(x, num_output_channels=3)
    if op == "blur":
        k = case["kernel"]
        return F.gaussian_blur(x, [k, k], [case["sigma"], case["sigma"]])
    if op == "solarize":
        return F.solarize(x, case["threshold"])
    if op == "normalize":
        return F.normalize(x, case["mean"], case["std"])
    if op == "jitter":
        fns = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
        for k in case["order"]:
            x = fns[k](x, case["factors"][k])
        return x
    if op == "pipeline":
        # The Rust pipeline's order: crop, flip, jitter, grayscale, blur, solarize, normalise.
        t, l, h, w = case["box"]
        x = F.resized_crop(x, t, l, h, w, case["size"], antialias=True)
        if case["flip"]:
            x = F.horizontal_flip(x)
        if case["order"] is not None:
            x = apply(x, {"op": "jitter", "order": case["order"], "factors": case["factors"]})
        if case["gray"]:
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        if case["sigma"] is not None:
            k = case["kernel"]
            x = F.gaussian_blur(x, [k, k], [case["sigma"], case["sigma"]])
        if case["solarize"]:
            x = F.solarize(x, 0.5)
        return F.normalize(x, CIFAR_MEAN, CIFAR_STD)
    raise ValueError(op)


def cases():
    c = []
    add = lambda name, inp, op, **kw: c.append(dict(name=name, input=inp, op=op, **kw))
    # Crop boxes are (top, left, height, width); size is [out_h, out_w].
    add("rc_up_aa", "noise", "resized_crop", box=[3, 5, 11, 13], size=[32, 32], antialias=True)
    add("rc_up_plain", "noise", "resized_crop", box=[3, 5, 11, 13], size=[32, 32], antialias=False)
    add("rc_down_aa", "noise", "resized_crop", box=[0, 0, 20, 24], size=[9, 7], antialias=True)
    add("rc_down_plain", "noise", "resized_crop", box=[0, 0, 20, 24], size=[9, 7], antialias=False)
    add("rc_mixed_aa", "noise", "resized_crop", box=[2, 1, 17, 22], size=[12, 30], antialias=True)
    add("rc_cifar", "cifar", "resized_crop", box=[4, 2, 20, 27], size=[32, 32], antialias=True)
    add("rc_cifar_down", "cifar", "resized_crop", box=[1, 0, 31, 29], size=[16, 16], antialias=True)
    add("rc_identity", "cifar", "resized_crop", box=[0, 0, 32, 32], size=[32, 32], antialias=True)
    add("hflip", "noise", "hflip")
    for inp in ["noise", "cifar"]:
        for f in [0.6, 1.4]:
            add(f"brightness_{inp}_{f}", inp, "brightness", factor=f)
            add(f"contrast_{inp}_{f}", inp, "contrast", factor=f)
        for f in [0.0, 0.6, 1.4]:
            add(f"saturation_{inp}_{f}", inp, "saturation", factor=f)
        for f in [-0.5, -0.1, 0.05, 0.1, 0.25, 0.5]:
            add(f"hue_{inp}_{f}", inp, "hue", factor=f)
        add(f"gray_{inp}", inp, "grayscale")
        add(f"solarize_{inp}", inp, "solarize", threshold=0.5)
    add("blur_k3", "noise", "blur", kernel=3, sigma=0.5)
    add("blur_k5", "noise", "blur", kernel=5, sigma=1.7)
    add("blur_cifar", "cifar", "blur", kernel=3, sigma=2.0)
    add("normalize", "cifar", "normalize", mean=CIFAR_MEAN, std=CIFAR_STD)
    add("jitter_a", "cifar", "jitter", order=[3, 0, 2, 1], factors=[1.2, 0.7, 1.3, 0.05])
    add("jitter_b", "noise", "jitter", order=[1, 2, 0, 3], factors=[0.8, 1.35, 0.65, -0.08])
    add("pipeline_a", "cifar", "pipeline", box=[4, 2, 20, 27], size=[32, 32], flip=True,
        order=[2, 3, 1, 0], factors=[1.1, 0.75, 1.3, -0.06], gray=False, kernel=3, sigma=1.1, solarize=True)
    add("pipeline_b", "cifar", "pipeline", box=[0, 5, 30, 23], size=[32, 32], flip=False,
        order=[0, 1, 3, 2], factors=[0.7, 1.25, 0.9, 0.09], gray=True, kernel=None, sigma=None, solarize=False)
    add("pipeline_c", "cifar", "pipeline", box=[2, 3, 16, 18], size=[32, 32], flip=True,
        order=None, factors=None, gray=False, kernel=None, sigma=None, solarize=False)
    return c


def crop_stats(h, w, scale, ratio, n=100_000):
    img = torch.zeros(3, h, w)
    hs, ws, ts, ls = (np.zeros(n, dtype=np.int64) for _ in range(4))
    for k in range(n):
        ts[k], ls[k], hs[k], ws[k] = RandomResizedCrop.get_params(img, scale, ratio)
    hist = lambda v, m: np.bincount(v, minlength=m + 1).astype(np.float64) / n
    return {
        "h_hist": hist(hs, h), "w_hist": hist(ws, w), "top_hist": hist(ts, h), "left_hist": hist(ls, w),
        "area_mean": np.array([np.mean(hs * ws / (h * w))]),
        "params": np.array([h, w, scale[0], scale[1], ratio[0], ratio[1], n], dtype=np.float64),
    }


def main():
    torch.manual_seed(0)
    inputs = {"noise": noise_image(), "cifar": cifar_image()}
    tensors = {f"input.{k}": torch.from_numpy(v.copy()) for k, v in inputs.items()}
    case_list = cases()
    for case in case_list:
        out = apply(to_float_chw(inputs[case["input"]]), case)
        tensors[f"case.{case['name']}"] = to_hwc(out).float()
    # Resize-on-load: Resize(size) (shorter side, anti-aliased bilinear) + CenterCrop(size), uint8.
    for inp, img in [("noise", inputs["noise"]), ("tall", inputs["noise"].transpose(1, 0, 2))]:
        tensors[f"input.{inp}"] = torch.from_numpy(img.copy())
        for size in [7, 9, 12, 30]:
            x = F.center_crop(F.resize(to_float_chw(img), [size], antialias=True), [size, size])
            tensors[f"resize.{inp}.{size}"] = to_hwc(x.mul(255).round().clamp(0, 255).to(torch.uint8))
    for cls in sorted(os.listdir(DEMO)):
        first = sorted(os.listdir(os.path.join(DEMO, cls)))[0]
        px = np.asarray(Image.open(os.path.join(DEMO, cls, first)).convert("RGB"), dtype=np.uint8)
        tensors[f"decode.{cls}"] = torch.from_numpy(px.copy())
    configs = {"square": (32, 32, (0.2, 1.0), (3 / 4, 4 / 3)), "wide": (20, 40, (0.08, 1.0), (3 / 4, 4 / 3))}
    for name, (h, w, scale, ratio) in configs.items():
        for k, v in crop_stats(h, w, scale, ratio).items():
            tensors[f"crop_stats.{name}.{k}"] = torch.from_numpy(v)
    meta = {"cases": json.dumps(case_list), "torch": torch.__version__, "torchvision": torchvision.__version__}
    save_file(tensors, OUT, metadata=meta)
    print(f"wrote {OUT}: {len(tensors)} tensors, {os.path.getsize(OUT)} bytes")


STORED_OUT = os.path.join(ROOT, "tests", "reference", "stored.safetensors")
NONSQUARE = os.path.join(ROOT, "tests", "reference", "nonsquare.jpg")
STORED_CROP = (5, 7, 30, 41)  # top, left, height, width


def stored_fixtures():
    """Images kept at their stored size (stored.safetensors and nonsquare.jpg): a 45x60 JPEG made
    from a demo image (Pillow bicubic upscale, quality 90), Pillow's decoding of it, and on that
    decoding (float, x / 255): the evaluation transform Resize(int(s / 0.875)) + CenterCrop(s)
    for s = 32 (the image is larger) and s = 64 (it is not: Resize(64) + CenterCrop(64)); a fixed
    RandomResizedCrop box resized to 32x32; and the longer side capped at 40 (Resize([30, 40]),
    rounded to uint8). All anti-aliased bilinear, stored HWC."""
    img = Image.open(os.path.join(DEMO, "ship", sorted(os.listdir(os.path.join(DEMO, "ship")))[0])).convert("RGB")
    img.resize((60, 45), Image.BICUBIC).save(NONSQUARE, quality=90)
    px = np.asarray(Image.open(NONSQUARE).convert("RGB"), dtype=np.uint8)
    x = to_float_chw(px)
    t = {"decode": torch.from_numpy(px.copy())}
    for size in (32, 64):
        short = int(size / 0.875) if min(px.shape[:2]) > size else size
        t[f"eval.{size}"] = to_hwc(F.center_crop(F.resize(x, [short], antialias=True), [size, size])).float()
    top, left, h, w = STORED_CROP
    t["crop"] = to_hwc(F.resized_crop(x, top, left, h, w, [32, 32], antialias=True)).float()
    t["crop_box"] = torch.tensor(STORED_CROP, dtype=torch.float64)
    t["cap40"] = to_hwc(F.resize(x, [30, 40], antialias=True).mul(255).round().clamp(0, 255).to(torch.uint8))
    save_file(t, STORED_OUT)
    print(f"wrote {STORED_OUT} and {NONSQUARE}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["stored"]:
        stored_fixtures()
    else:
        main()
        stored_fixtures()
