"""Float64 plain-torch ground truth for the tests: log_softmax, gather, entropy; written independently of the ops."""
import torch


def ref_logprobs_entropy(logits, targets, temperature=1.0, ignore_index=-100):
    """Returns float64 (lp, ent) with 0 at ignored positions; differentiable w.r.t. a float64 leaf."""
    z = logits.double() / temperature
    logp = torch.log_softmax(z, dim=-1)
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets)).long()
    lp = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    p = logp.exp()
    # mask log p before the product so -inf columns give 0 (and a 0, not NaN, gradient)
    ent = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
    zero = torch.zeros_like(lp)
    return torch.where(keep, lp, zero), torch.where(keep, ent, zero)


def ref_linear_logits(hidden, weight, bias=None):
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    return z
