"""BPDA (Athalye, Carlini & Wagner 2018) for a purifier: the chain with g's backward pass replaced by the identity.

A purifier that saturates (a bounded residual at a high gain pushes most pixels to a fixed correction) has input
gradients near zero wherever it saturates, and a white-box attack through it may stall where an attack that sees
past g would not. `StraightThroughPurifier` computes exactly the model's forward pass, `h(f(g(x)))`, but
differentiates it as `h(f(x'))` at `x' = g(x)`: the gradient of the classifier at the purified image, passed
straight back to `x`. `cropd-eval --bpda` attacks it with the suite's longest PGD and checks that the white-box PGD
is at least as strong (the "white-box at least as strong as transfer" sanity check).
"""

from __future__ import annotations

from torch import Tensor, nn

BPDA_SOURCE = "BPDA: the evaluated model with the purifier's backward pass replaced by the identity"


class StraightThroughPurifier(nn.Module):
    """`model`'s logits, `h(f(g(x)))`, with the gradient of `h(f(·))` at `g(x)` as the gradient w.r.t. `x`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if getattr(model, "purifier", None) is None:
            raise ValueError(
                "--bpda needs a model with a purifier g (use_purifier=True); this one has none: its white-box "
                "attacks already see every layer."
            )
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        purified = self.model.purify(pixel_values)
        straight_through = pixel_values + (purified - pixel_values).detach()
        return self.model(straight_through, purify=False).logits
