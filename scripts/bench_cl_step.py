"""The PyTorch reference for one contrastive training step, built like vcl's
(MobileNetV2 -> image map Linear(1000, h) and fMRI map Linear(V, h), no bias -> shared
g = Linear, BatchNorm1d, ReLU, Linear, BatchNorm1d, ReLU, Linear(h, z) -> one-directional
InfoNCE, tau 0.3 -> backward -> Adam lr 1e-4, every layer trained), on the CPU or CUDA,
in float32 or bf16 / fp16 autocast (fp16 with GradScaler), the way a PyTorch user writes
it: no host read of the loss inside the timed steps.
Prints one JSON line: seconds per step over the timed steps, page faults, peak RSS and,
counted by torch's FlopCounterMode, the step's FLOPs (3 x the forward's).

  python scripts/bench_cl_step.py --size 224 --batch 64 --threads 2
  python scripts/bench_cl_step.py --device cuda --precision bf16 --batch 256

MobileNetV2 is torchvision's when it is installed, else the same network defined here
(torchvision's module names: the weights load with strict=True either way).
"""
import argparse, json, resource, time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(i, o, k, s, groups=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(o), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, i, o, stride, t):
        super().__init__()
        hidden = i * t
        self.residual = stride == 1 and i == o
        layers = [] if t == 1 else [conv_bn(i, hidden, 1, 1)]
        layers += [conv_bn(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, o, 1, 1, 0, bias=False),
                   nn.BatchNorm2d(o)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0), same names and initialization rules."""

    def __init__(self):
        super().__init__()
        c, feats = 32, [conv_bn(3, 32, 3, 2)]
        for t, o, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                           [6, 160, 3, 2], [6, 320, 1, 1]]:
            for k in range(n):
                feats.append(InvertedResidual(c, o, s if k == 0 else 1, t))
                c = o
        feats.append(conv_bn(c, 1280, 1, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def mobilenet_v2():
    try:
        import torchvision
        return torchvision.models.mobilenet_v2(), f"torchvision {torchvision.__version__}"
    except ImportError:
        return MobileNetV2(), "defined in bench_cl_step.py (no torchvision)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--voxels", type=int, default=500)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--weights", default=".cache/weights/mobilenet_v2.safetensors")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as vcl sets it on CUDA
    net, source = mobilenet_v2()
    try:
        from safetensors.torch import load_file
        net.load_state_dict(load_file(a.weights))
    except (OSError, ImportError):
        pass  # random weights time the same
    h, z = int(0.8 * a.voxels), int(0.2 * a.voxels)
    image_map = nn.Linear(1000, h, bias=False)
    fmri_map = nn.Linear(a.voxels, h, bias=False)
    g = nn.Sequential(nn.Linear(h, h), nn.BatchNorm1d(h), nn.ReLU(),
                      nn.Linear(h, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, z, bias=False))
    for m in (net, image_map, fmri_map, g):
        m.to(dev)
    params = [*net.parameters(), *image_map.parameters(), *fmri_map.parameters(), *g.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4)
    net.train(); g.train()
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    y = torch.randn(a.batch, a.voxels, device=dev)
    target = torch.arange(a.batch, device=dev)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a.precision] if cuda else None
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    def step():
        opt.zero_grad(set_to_none=False)
        with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            z_img = F.normalize(g(image_map(net(x).float())), dim=1, eps=1e-8)
            z_fmri = F.normalize(g(fmri_map(y)), dim=1, eps=1e-8)
            s = z_fmri @ z_img.T / 0.3
            loss = F.cross_entropy(s.T, target)  # image as anchor, responses as candidates
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss.detach()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # FLOPs: 3 x the forward's, counted (backward ~ 2 x forward). FlopCounterMode's own
    # count of convolution_backward treats depthwise convolutions as dense (10x over).
    flops = None
    try:
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter, torch.autocast("cuda", dtype=amp, enabled=amp is not None):
            F.normalize(g(image_map(net(x).float())), dim=1) @ F.normalize(g(fmri_map(y)), dim=1).T
        flops = 3 * counter.get_total_flops()
    except Exception:  # the count is informative; the timing does not need it
        pass
    step()
    step().item()  # a second warm-up: cuDNN's autotuner tried its algorithms on the first
    sync()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    for _ in range(a.steps):
        last = step()
    final_loss = last.item()
    sync()
    secs = (time.perf_counter() - t0) / a.steps
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds_per_step": secs, "images_per_s": a.batch / secs,
                      "page_faults_per_step": (ru.ru_minflt - f0) / a.steps,
                      "peak_rss_gib": ru.ru_maxrss / 2**20, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "device": str(dev), "precision": a.precision if cuda else "fp32",
                      "flops_per_step": flops, "model": source, "final_loss": final_loss}))


if __name__ == "__main__":
    main()
