"""A batched matrix product on a GPU executor.

    cbctl up --gpu-executors 1                  # one GPU executor per device you give it
    cbctl deploy examples/gpu_matmul.py
    cbctl call matmul '[[1, 2], [3, 4]]' '[[5, 6], [7, 8]]'      # -> [[19.0, 22.0], [43.0, 50.0]]

On a machine without a GPU, try it with the testing-only switch that fakes a device (the product then runs
on the CPU): ``cbctl up --executors 1 --gpu-executors 1 --fake-gpus 1``.

``batching=True``: calls that queued up on the executor arrive as one invocation, each parameter a list with
one entry per call, and the function returns one product per call. Same-shaped matrices are stacked and
multiplied in one batched product: ``torch.bmm`` on the executor's GPU when PyTorch sees CUDA, on the CPU
when it does not, and numpy's batched ``matmul`` when PyTorch is not installed (it is not a dependency).
"""

from __future__ import annotations

from typing import Any

import cbctl


def batched_product(lefts: list[Any], rights: list[Any]) -> list[list[list[float]]]:
    """``lefts[i] @ rights[i]`` for every i, one batched product per group of equal shapes."""
    import numpy as np

    a = [np.asarray(x, dtype=np.float64) for x in lefts]
    b = [np.asarray(y, dtype=np.float64) for y in rights]
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for i, (x, y) in enumerate(zip(a, b)):
        if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[0]:
            raise ValueError(f"call {i}: cannot multiply a {x.shape} matrix by a {y.shape} one")
        groups.setdefault((x.shape, y.shape), []).append(i)
    results: list[Any] = [None] * len(a)
    for indexes in groups.values():
        left = np.stack([a[i] for i in indexes])
        right = np.stack([b[i] for i in indexes])
        for i, product in zip(indexes, _bmm(left, right)):
            results[i] = product.tolist()
    return results


def _bmm(left: Any, right: Any) -> Any:
    try:
        import torch
    except ImportError:
        return left @ right  # numpy: a batched matmul over the leading axis
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CUDA_VISIBLE_DEVICES leaves this executor one
    product = torch.bmm(torch.from_numpy(left).to(device), torch.from_numpy(right).to(device))
    return product.cpu().numpy()


@cbctl.function(gpu=True, batching=True)
def matmul(cb: Any, lefts: list[Any], rights: list[Any]) -> list[list[list[float]]]:
    return batched_product(lefts, rights)
