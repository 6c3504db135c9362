"""The PyTorch reference for one contrastive training step, built like vcl's
(torchvision MobileNetV2 -> image map Linear(1000, h) and fMRI map Linear(V, h), no
bias -> shared g = Linear, BatchNorm1d, ReLU, Linear, BatchNorm1d, ReLU, Linear(h, z)
-> one-directional InfoNCE, tau 0.3 -> backward -> Adam lr 1e-4, every layer trained).
Prints one JSON line: seconds per step over the timed steps, page faults, peak RSS.

  python scripts/bench_cl_step.py --size 224 --batch 64 --threads 2
"""
import argparse, json, resource, time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--voxels", type=int, default=500)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", default=".cache/weights/mobilenet_v2.safetensors")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2()
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
    params = [*net.parameters(), *image_map.parameters(), *fmri_map.parameters(), *g.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4)
    net.train(); g.train()
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randn(a.batch, a.voxels)
    target = torch.arange(a.batch)

    def step():
        opt.zero_grad(set_to_none=False)
        z_img = F.normalize(g(image_map(net(x))), dim=1, eps=1e-8)
        z_fmri = F.normalize(g(fmri_map(y)), dim=1, eps=1e-8)
        s = z_fmri @ z_img.T / 0.3
        loss = F.cross_entropy(s.T, target)  # image as anchor, responses as candidates
        loss.backward()
        opt.step()
        return loss.item()

    step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    secs = (time.perf_counter() - t0) / a.steps
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds_per_step": secs, "images_per_s": a.batch / secs,
                      "page_faults_per_step": (ru.ru_minflt - f0) / a.steps,
                      "peak_rss_gib": ru.ru_maxrss / 2**20, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
