"""The edit ceiling of a ShapesWorld VAE: the best edit-region IoU and background PSNR ANY latent editor can reach
through it, because the exact target of each held-out simple edit is already scored after an encode / decode.
Prints plain decoding and residual decoding (``scheduler.decode``) side by side, and their ratio.

    python bench/vae_ceiling.py runs/shapes/decoder/vae [--count 48] [--side 64]
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("vae", help="a diffusers AutoencoderKL folder (e.g. runs/shapes/decoder/vae)")
    p.add_argument("--count", type=int, default=48, help="held-out recolour / remove edits (default 48)")
    p.add_argument("--side", type=int, default=64, help="image side in pixels (default 64, the recipe's)")
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args(argv)

    import torch
    from diffusers import AutoencoderKL

    from smartedit.shapes.pretrain import vae_edit_ceiling

    torch.manual_seed(0)
    vae = AutoencoderKL.from_pretrained(args.vae, local_files_only=True).eval()
    c = vae_edit_ceiling(vae, args.seed, args.side, count=args.count)
    print(f"{'decode':<10}{'edit IoU':>10}{'bg PSNR':>10}")
    for name in ("latent", "residual"):
        print(f"{name:<10}{c[name + '_iou']:>10.3f}{c[name + '_bg']:>10.1f}")
    ratio = c["residual_iou"] / max(c["latent_iou"], 1e-9)
    print(f"residual / latent IoU ratio: {ratio:.2f}  (raw targets score 1.0)")
    print(json.dumps(c))
    return c


if __name__ == "__main__":
    main(sys.argv[1:])
