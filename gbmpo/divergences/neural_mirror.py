"""GBMPO's neural mirror map: a learned convex potential h on token probabilities.

    h'(y) = sum_j v_j sigma_j(w_j y + b_j) + a y + c log y,       y in (0, 1]
    D_h(y || y0) = h(y) - h(y0) - h'(y0) (y - y0)                   (Bregman divergence)

126 units, 21 of each activation u^3, u^2, sqrt(max(u,0)), cbrt(max(u,0)), log(max(u,0)+1e-3),
exp(u); parameters v, w, b in R^126 and a, c: 380 numbers, not trained by gradient (random
init i.i.d. Uniform[0, 0.01), or supplied by the evolutionary search). Non-negative parameters
make h convex, hence D_h >= 0; the search may leave that region, which `convexity_report` says.
h is evaluated through closed-form antiderivatives S_j of the activations:
    h(y) = sum_j v_j S_j(w_j y + b_j) / w_j + a y^2 / 2 + c (y log y - y).
All arithmetic is float64: D_h is a second-order difference of O(1) terms.
Reference: GBMPO (group-based mirror policy optimisation), NM-GRPO.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from gbmpo.core import TokenView
from gbmpo.divergences.base import DIVERGENCES, Divergence

N_UNITS = 126
N_KINDS = 6
N_PARAMS = 3 * N_UNITS + 2  # v, w, b, a, c
LOG_EPS = 1e-3  # inside log(max(u, 0) + eps)
P_FLOOR = 1e-10  # probabilities are floored here before log / division
EXP_CLAMP = 50.0
FILE_FORMAT = "gbmpo-neural-mirror"


def _kinds() -> torch.Tensor:
    # unit j uses activation kind j // 21: cube, square, sqrt, cbrt, log, exp
    return torch.arange(N_UNITS) // (N_UNITS // N_KINDS)


def activations(u: torch.Tensor) -> torch.Tensor:
    """sigma_j(u) for every unit; u has trailing dim N_UNITS."""
    k = _kinds().to(u.device)
    up = u.clamp(min=0)
    out = torch.stack(
        [u**3, u**2, up.sqrt(), up.pow(1 / 3), torch.log(up + LOG_EPS),
         torch.exp(u.clamp(max=EXP_CLAMP))],
        dim=-1,
    )
    return out.gather(-1, k.expand(u.shape).unsqueeze(-1)).squeeze(-1)


def primitives(u: torch.Tensor) -> torch.Tensor:
    """S_j(u) with S_j' = sigma_j and S_j(0) = 0 for the clamped kinds (closed forms)."""
    k = _kinds().to(u.device)
    up = u.clamp(min=0)
    e = LOG_EPS
    log_prim = (up + e) * torch.log(up + e) - (up + e) - (e * math.log(e) - e)
    log_prim = log_prim + u.clamp(max=0) * math.log(e)  # slope log(eps) for u <= 0
    out = torch.stack(
        [u**4 / 4, u**3 / 3, (2 / 3) * up.pow(1.5), 0.75 * up.pow(4 / 3), log_prim,
         torch.exp(u.clamp(max=EXP_CLAMP))],
        dim=-1,
    )
    return out.gather(-1, k.expand(u.shape).unsqueeze(-1)).squeeze(-1)


def split_params(theta: torch.Tensor):
    v, w, b = theta[:N_UNITS], theta[N_UNITS : 2 * N_UNITS], theta[2 * N_UNITS : 3 * N_UNITS]
    return v, w, b, theta[-2], theta[-1]


def h_prime(y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    v, w, b, a, c = split_params(theta)
    u = y[..., None] * w + b
    return (v * activations(u)).sum(-1) + a * y + c * torch.log(y)


def bregman(y: torch.Tensor, y0: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """D_h(y || y0), elementwise over any shape; float64 in, float64 out."""
    v, w, b, a, c = split_params(theta)
    dy = y - y0
    u, u0 = y[..., None] * w + b, y0[..., None] * w + b
    small = w.abs() < 1e-12
    w_safe = torch.where(small, torch.ones_like(w), w)
    # (S(u) - S(u0)) / w - sigma(u0) dy; -> 0 as w -> 0 (second order in w dy)
    unit = (primitives(u) - primitives(u0)) / w_safe - activations(u0) * dy[..., None]
    unit = torch.where(small, torch.zeros_like(unit), unit)
    quad = 0.5 * a * dy**2  # Bregman of a y^2/2
    ent = c * (y * (torch.log(y) - torch.log(y0)) - dy)  # Bregman of c (y log y - y)
    return (v * unit).sum(-1) + quad + ent


def random_params(seed: int, scale: float = 0.01) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N_PARAMS, generator=g, dtype=torch.float64) * scale


def save_params(path: str | Path, theta, provenance: dict | None = None) -> None:
    """Write a parameter vector as JSON (atomic): {"format", "version", "params", "provenance"}."""
    vals = [float(x) for x in (theta.tolist() if hasattr(theta, "tolist") else theta)]
    if len(vals) != N_PARAMS:
        raise ValueError(f"neural mirror map needs {N_PARAMS} parameters, got {len(vals)}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    doc = {"format": FILE_FORMAT, "version": 1, "params": vals, "provenance": provenance or {}}
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(p)


def load_params(path: str | Path) -> tuple[torch.Tensor, dict]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"neural mirror parameter file {str(p)!r} does not exist")
    doc = json.loads(p.read_text())
    if doc.get("format") != FILE_FORMAT or len(doc.get("params", [])) != N_PARAMS:
        raise ValueError(
            f"{p} is not a neural mirror parameter file (expected format {FILE_FORMAT!r} "
            f"with {N_PARAMS} params)"
        )
    return torch.tensor(doc["params"], dtype=torch.float64), doc.get("provenance", {})


def convexity_report(theta: torch.Tensor, n_grid: int = 2001) -> dict:
    """Non-negative parameters suffice for convexity; otherwise check h'' >= 0 on a grid."""
    nonneg = bool((theta >= 0).all())
    y = torch.logspace(-10, 0, n_grid, dtype=torch.float64)
    hp = h_prime(y, theta)
    slope = (hp[1:] - hp[:-1]) / (y[1:] - y[:-1])
    min_h2 = float(slope.min())
    return {"convexity_safe": nonneg or min_h2 >= 0, "params_nonnegative": nonneg,
            "min_h2_on_grid": min_h2}


@DIVERGENCES.register("neural_mirror")
class NeuralMirror(Divergence):
    """GBMPO NM-GRPO: Bregman divergence of a 380-parameter neural mirror map on p vs p_ref.

    params_path: JSON parameter file (from `save_params` or an ES search); empty -> random
    Uniform[0, init_scale) drawn from the run seed.
    params: the parameter values themselves (instead of a file), as an ES search's candidate
    cells carry them, so that a cell runs on any machine; `source` then names where they come
    from (a label, not read).
    """

    def __init__(self, params_path: str = "", init_scale: float = 0.01, seed: int = 0,
                 params: list[float] | None = None, source: str = "") -> None:
        if params is not None and params_path:
            raise ValueError("neural_mirror takes divergence.params.params or "
                             "divergence.params.params_path, not both")
        if params is not None:
            numbers = isinstance(params, (list, tuple)) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in params)
            if not numbers or len(params) != N_PARAMS:
                got = f"{len(params)} numbers" if numbers else repr(params)[:60]
                raise ValueError(f"divergence.params.params must be a list of {N_PARAMS} "
                                 f"numbers, got {got}")
            self.theta, self.provenance = torch.tensor(params, dtype=torch.float64), {}
            self.source = f"inline ({source})" if source else "inline"
        elif params_path:
            self.theta, self.provenance = load_params(params_path)
            self.source = str(params_path)
        else:
            self.theta, self.provenance = random_params(seed, init_scale), {}
            self.source = f"random Uniform[0, {init_scale}) seed {seed}"
        self.report = convexity_report(self.theta)
        if not self.report["convexity_safe"]:
            import warnings

            warnings.warn(
                f"neural mirror parameters from {self.source} are not convexity-safe "
                f"(min h'' on grid {self.report['min_h2_on_grid']:.3g}); D_h can be negative",
                stacklevel=2,
            )

    def per_token(self, view: TokenView) -> torch.Tensor:
        theta = self.theta.to(view.logp.device)
        y = torch.exp(view.logp.double()).clamp(min=P_FLOOR)
        y0 = torch.exp(view.logp_ref.double()).clamp(min=P_FLOOR)
        return bregman(y, y0, theta).to(view.logp.dtype)

    def describe(self) -> dict:
        return {"params_source": self.source, **self.report}
