"""Stands in for ``torch.cuda.device_count()`` on the simulated GPUs of ``pynvml.py`` beside it:
prints how many devices a CUDA program started with this environment would see, following
CUDA's documented rule for ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-`` UUID prefixes; an empty
value hides all; the first invalid entry ends the list). The real check asks torch instead."""

import os

UUIDS = ("GPU-5157ab00-0000-4000-8000-000000000000", "GPU-5157ab01-0000-4000-8000-000000000001")

spec = os.environ.get("CUDA_VISIBLE_DEVICES")
if spec is None:
    seen = list(range(len(UUIDS)))
else:
    seen = []
    for token in spec.split(","):
        token = token.strip()
        if token.isdigit() and int(token) < len(UUIDS):
            seen.append(int(token))
        elif token.startswith("GPU-") and sum(u.startswith(token) for u in UUIDS) == 1:
            seen.append(next(i for i, u in enumerate(UUIDS) if u.startswith(token)))
        else:
            break
print(len(dict.fromkeys(seen)))
