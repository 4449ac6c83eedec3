"""The tests' own selective-scan oracle: a plain token-by-token float64 loop written from the Mamba equations,
sharing no code with vivim.ops (its input preparation, output gate and shape checks are checked against it).

    dt = softplus(delta + delta_bias)            (each step optional)
    h_t = exp(dt_t * A) * h_{t-1} + dt_t * u_t * B_t,   y_t = <h_t, C_t> + D * u_t,   y_t *= silu(z_t)
Channel d of D channels uses B/C group d // (D / G).
"""

import torch
import torch.nn.functional as F


def scan_oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    u64, dt = u.double(), delta.double()
    if delta_bias is not None:
        dt = dt + delta_bias.double()[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    batch, dim, L = u.shape
    B4 = (B if B.dim() == 4 else B.unsqueeze(1)).double()
    C4 = (C if C.dim() == 4 else C.unsqueeze(1)).double()
    G, N = B4.shape[1], A.shape[1]
    P = dim // G  # channels per group; channel d = g * P + p uses group g
    A64 = A.double().view(G, P, N)
    dt4 = dt.view(batch, G, P, L)
    dtu = (dt * u64).view(batch, G, P, L)
    h = torch.zeros(batch, G, P, N, dtype=torch.float64, device=u.device)
    ys = []
    for t in range(L):
        h = torch.exp(dt4[..., t, None] * A64) * h + dtu[..., t, None] * B4[:, :, None, :, t]
        ys.append((h * C4[:, :, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1).reshape(batch, dim, L)  # stack, not in-place writes: autograd flows through
    if D is not None:
        y = y + D.double()[None, :, None] * u64
    if z is not None:
        y = y * F.silu(z.double())
    return y
