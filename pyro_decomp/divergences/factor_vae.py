"""FactorVAE's total-correlation regulariser with a density-ratio discriminator (Kim & Mnih 2018; thesis §4.3, Table 5.5).

.. math::

    \\mathrm{TC}(z) = \\mathrm{KL}\\big(q(z) \\,\\|\\, \\textstyle\\prod_d q(z_d)\\big)
    \\approx \\mathbb E_{q(z)}\\Big[\\log \\frac{D(z)}{1 - D(z)}\\Big] = \\mathbb E_{q(z)}[\\ell_0(z) - \\ell_1(z)]

where :math:`D` classifies codes from :math:`q(z)` (class 0) against codes whose dimensions were shuffled
across a batch, i.e. samples of :math:`\\prod_d q(z_d)` (class 1), and :math:`\\ell_0, \\ell_1` are its two logits.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._utils import ScheduledDivergence
from .base import AggregateBatch

__all__ = ["FactorVAE", "FactorVAEDiscriminator", "permute_dims"]

_SECOND_BATCH = ("half", "previous", "same")


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shuffle each latent dimension independently across the batch: ``z: [B, D]`` → ``[B, D]``.

    If the rows of ``z`` are samples of :math:`q(z)`, the rows of the result are (approximately, for a
    finite batch) samples of :math:`\\prod_d q(z_d)` (Kim & Mnih 2018, Alg. 1).
    """
    if not torch.is_tensor(z) or z.dim() != 2:
        raise ValueError(f"permute_dims expects a [B, D] tensor, got {getattr(z, 'shape', type(z))}.")
    B, D = z.shape
    keys = torch.rand((B, D), generator=generator, device="cpu").to(z.device)
    idx = keys.argsort(dim=0)
    return torch.gather(z, 0, idx)


class FactorVAEDiscriminator(nn.Module):
    """The thesis' discriminator (Table 5.5): ``Linear(D, 1000)`` + LeakyReLU(0.2), five such layers in all,
    then ``Linear(1000, 2)``: six linear layers, two logits.

    Table 5.5 lists "Leaky ReLU" on the last row too; SPEC §2 records the decision to leave the output
    linear (a LeakyReLU on logits would bias the density ratio; Kim & Mnih's output layer is linear).
    ``output_activation=True`` reproduces the table literally.

    :param latent_dim: ``D``.
    :param hidden_size: width of the hidden layers (1000 in the thesis).
    :param num_hidden_layers: number of Linear+LeakyReLU blocks (5 in the thesis).
    :param negative_slope: LeakyReLU slope (0.2, Kim & Mnih).
    """

    def __init__(
        self,
        latent_dim: int,
        hidden_size: int = 1000,
        num_hidden_layers: int = 5,
        negative_slope: float = 0.2,
        output_activation: bool = False,
    ) -> None:
        super().__init__()
        for name, v in (
            ("latent_dim", latent_dim),
            ("hidden_size", hidden_size),
            ("num_hidden_layers", num_hidden_layers),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        layers: list[nn.Module] = []
        width = latent_dim
        for _ in range(num_hidden_layers):
            layers += [nn.Linear(width, hidden_size), nn.LeakyReLU(negative_slope)]
            width = hidden_size
        layers.append(nn.Linear(width, 2))
        if output_activation:
            layers.append(nn.LeakyReLU(negative_slope))
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., 2]`` for codes ``z: [..., D]``: index 0 = "from q(z)", 1 = "dimensions permuted"."""
        return self.net(z)


class FactorVAE(ScheduledDivergence):
    """FactorVAE's total correlation as a :class:`~pyro_decomp.divergences.Divergence` (thesis §4.3, Table 5.5).

    **VAE side** (``__call__``): :math:`\\widehat{\\mathrm{TC}} = \\frac1{PB}\\sum_{p,b} [\\ell_0(z_b) - \\ell_1(z_b)]` on the
    batch's codes ``z_q``. The discriminator's parameters enter this computation as *detached* copies
    (:func:`torch.func.functional_call`), so the VAE's loss puts no gradient on them, while gradients
    flow into the encoder through ``z_q``.

    **Discriminator side** (``update``, called by the ELBO once per ``loss_and_grads`` after the VAE's
    backward): one step of its own Adam optimiser (lr 1e-4, betas (0.5, 0.9), thesis Table 5.5) on the
    cross-entropy of codes of :math:`q(z)` (label 0) against permuted codes (label 1). All codes are
    *detached*, so the discriminator's loss never reaches the VAE's parameters; and it is a separate
    graph, so it cannot touch the VAE's accumulated gradients. The discriminator is a plain
    :class:`torch.nn.Module`, not in Pyro's param store, so ``SVI``'s optimiser never sees it.

    The "second batch" that is permuted (Kim & Mnih, Alg. 1) is chosen by ``second_batch``:

    * ``"half"`` (default): the batch's codes are split in two; the first half are the joint samples and
      the second half, permuted, the factorised samples (so use an even batch, at least 4);
    * ``"previous"``: the whole batch is the joint sample and the previous step's (detached) codes are
      permuted. This is an independent minibatch, one step stale. The first step falls back to ``"half"``;
    * ``"same"``: the batch's own codes are permuted (the classes then share rows; cheap, more correlated).

    A user with their own second minibatch can call :meth:`discriminator_step` directly.

    With :class:`~pyro_decomp.DecompositionELBO` the loss gains :math:`\\alpha n \\widehat{\\mathrm{TC}}`, so the
    FactorVAE objective (ELBO :math:`-\\lambda` TC per datapoint) is
    ``DecompositionELBO(beta=1, alpha=lam, divergence=FactorVAE(latent_dim=D))``; thesis Table 5.4 uses
    :math:`\\lambda \\in \\{5, 10, 25, 50, 100\\}`. ``state_dict()`` holds the discriminator's weights, the
    optimiser's state, the step and the stored second batch, all tensors and primitives (loadable with
    ``torch.load(weights_only=True)``).

    :param latent_dim: ``D``.
    :param hidden_size: discriminator width (1000).
    :param num_hidden_layers: Linear+LeakyReLU blocks (5).
    :param lr: Adam learning rate (1e-4).
    :param betas: Adam betas ((0.5, 0.9)).
    :param second_batch: ``"half"``, ``"previous"`` or ``"same"``.
    :param discriminator_steps: discriminator updates per SVI step (1).

    >>> import pyro_decomp
    >>> tc = FactorVAE(latent_dim=10)
    >>> elbo = pyro_decomp.DecompositionELBO(beta=1.0, alpha=25.0, divergence=tc)
    """

    def __init__(
        self,
        latent_dim: int,
        *,
        hidden_size: int = 1000,
        num_hidden_layers: int = 5,
        negative_slope: float = 0.2,
        output_activation: bool = False,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        second_batch: str = "half",
        discriminator_steps: int = 1,
    ) -> None:
        super().__init__()
        if second_batch not in _SECOND_BATCH:
            raise ValueError(f"second_batch must be one of {_SECOND_BATCH}, got {second_batch!r}.")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}.")
        if (
            not isinstance(betas, (tuple, list))
            or len(betas) != 2
            or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)
        ):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}.")
        if isinstance(discriminator_steps, bool) or not isinstance(discriminator_steps, int) or discriminator_steps < 1:
            raise ValueError(f"discriminator_steps must be a positive integer, got {discriminator_steps!r}.")
        self.discriminator = FactorVAEDiscriminator(
            latent_dim,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            negative_slope=negative_slope,
            output_activation=output_activation,
        )
        self.latent_dim = int(latent_dim)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=float(lr), betas=tuple(betas))
        self.second_batch = second_batch
        self.discriminator_steps = discriminator_steps
        self._previous: torch.Tensor | None = None

    # ------------------------------------------------------------------ device
    def to(self, device: torch.device | str) -> FactorVAE:
        """Move the discriminator (and the optimiser's state) to ``device``."""
        self.discriminator.to(device)
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if torch.is_tensor(v) and k != "step":
                    state[k] = v.to(device)
        if self._previous is not None:
            self._previous = self._previous.to(device)
        return self

    def _codes(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.discriminator.latent_dim:
            raise ValueError(
                f"FactorVAE was built for latent_dim={self.discriminator.latent_dim}, but the codes have "
                f"{z.shape[-1]} dimensions; pass latent_dim={z.shape[-1]}."
            )
        param = next(self.discriminator.parameters())
        if param.device != z.device or param.dtype != z.dtype:
            self.to(z.device)
            self.discriminator.to(z.dtype)
        return z.reshape(-1, z.shape[-1])

    # ------------------------------------------------------------------ VAE side
    def __call__(self, batch: AggregateBatch) -> torch.Tensor:
        z = self._codes(batch.z_q)
        frozen = {k: v.detach() for k, v in self.discriminator.state_dict(keep_vars=True).items()}
        logits = torch.func.functional_call(self.discriminator, frozen, (z,))
        return (logits[:, 0] - logits[:, 1]).mean()

    def estimate_tc(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\widehat{\\mathrm{TC}}` for codes ``z: [..., D]`` (no gradients anywhere)."""
        with torch.no_grad():
            logits = self.discriminator(self._codes(z))
            return (logits[:, 0] - logits[:, 1]).mean()

    # ------------------------------------------------------------------ discriminator side
    def discriminator_step(self, z_joint: torch.Tensor, z_second: torch.Tensor) -> dict[str, float]:
        """One optimiser step on detached codes: ``z_joint [B1, D]`` (label 0) vs ``permute_dims(z_second)`` (label 1)."""
        z_joint = self._codes(z_joint.detach())
        z_perm = permute_dims(self._codes(z_second.detach()))
        logits_joint = self.discriminator(z_joint)
        logits_perm = self.discriminator(z_perm)
        zeros = torch.zeros(logits_joint.shape[0], dtype=torch.long, device=z_joint.device)
        ones = torch.ones(logits_perm.shape[0], dtype=torch.long, device=z_joint.device)
        loss = 0.5 * (nn.functional.cross_entropy(logits_joint, zeros) + nn.functional.cross_entropy(logits_perm, ones))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            acc = 0.5 * ((logits_joint.argmax(-1) == 0).float().mean() + (logits_perm.argmax(-1) == 1).float().mean())
        return {"discriminator_loss": float(loss.detach()), "discriminator_accuracy": float(acc)}

    def update(self, batch: AggregateBatch) -> dict[str, float]:
        super().update(batch)
        z = self._codes(batch.z_q.detach())
        aux: dict[str, float] = {}
        for _ in range(self.discriminator_steps):
            mode = self.second_batch
            if mode == "previous" and (self._previous is None or self._previous.shape[-1] != z.shape[-1]):
                mode = "half"
            if mode == "half":
                if z.shape[0] < 4:
                    raise ValueError(
                        "FactorVAE with second_batch='half' needs at least 4 codes per step (2 per half); "
                        f"got {z.shape[0]}. Use a larger batch or second_batch='same'."
                    )
                h = z.shape[0] // 2
                aux = self.discriminator_step(z[:h], z[h : 2 * h])
            elif mode == "previous":
                aux = self.discriminator_step(z, self._previous)
            else:
                aux = self.discriminator_step(z, z)
        if self.second_batch == "previous":
            self._previous = z.clone()
        with torch.no_grad():
            aux["tc"] = float(self.estimate_tc(z))
        return aux

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        state = super().state_dict()
        # snapshots, not references: later discriminator steps must not change a saved state
        state["discriminator"] = {k: v.detach().clone() for k, v in self.discriminator.state_dict().items()}
        state["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
        if self._previous is not None:
            state["previous_codes"] = self._previous.detach().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        missing = {"discriminator", "optimizer"} - set(state) if isinstance(state, dict) else {"a dict"}
        if missing:
            raise ValueError(
                f"FactorVAE.load_state_dict: the state lacks {sorted(missing)}; pass FactorVAE.state_dict()."
            )
        super().load_state_dict(state)
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        prev = state.get("previous_codes")
        device = next(self.discriminator.parameters()).device
        self._previous = None if prev is None else prev.to(device)

    def __repr__(self) -> str:
        return (
            f"FactorVAE(latent_dim={self.latent_dim}, second_batch={self.second_batch!r}, "
            f"discriminator_steps={self.discriminator_steps}, step={self.step})"
        )
