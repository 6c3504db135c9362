"""Convert a torchvision checkpoint (legacy or zip .pth) to safetensors for vcl.

    python scripts/convert_weights.py IN.pth OUT.safetensors

Keys are kept exactly as torchvision names them, so vcl's backbones load them
unchanged. Used by set-up for the bundled MobileNetV2, and by users for their own
AlexNet / ResNet weights.
"""
import sys

import torch
from safetensors.torch import save_file


def main(src: str, dst: str) -> None:
    state = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SystemExit(f"{src}: expected a state dict, found {type(state).__name__}")
    tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise SystemExit(f"{src}: holds no tensors")
    save_file(tensors, dst)
    print(f"{dst}: {len(tensors)} tensors")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
