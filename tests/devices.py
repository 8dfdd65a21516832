"""The devices a numeric test runs on: the CPU always, and the GPU where torch sees one (the CUDA
path of the trainer's forward and rounding is checked wherever a suite runs on a GPU machine)."""

import torch

DEVICES = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
DEVICE_IDS = [d.type for d in DEVICES]
