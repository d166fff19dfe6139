"""Float64 plain-torch ground truth for the tests: log_softmax, gather, entropy; written independently of the ops."""
import torch


def ref_flagged_rows(logits, temperature=1.0):
    """Rows the ops flag with NaN (NON_FINITE_ROWS, prepo_kernels/logprobs_entropy_torch.py): z = logits / T, in the ops'
    compute dtype (float64 for float64 logits, else float32), holds NaN or +inf, or is all -inf."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.detach().to(acc) * (1.0 / temperature)
    return torch.isnan(z).any(-1) | torch.isposinf(z).any(-1) | torch.isneginf(z).all(-1)


def ref_logprobs_entropy(logits, targets, temperature=1.0, ignore_index=-100):
    """Returns float64 (lp, ent) with 0 at ignored positions; differentiable w.r.t. a float64 leaf.

    Flagged rows (``ref_flagged_rows``) that are not ignored give NaN in both and a NaN gradient towards each of
    their logits; the other rows never see them (they are computed on logits whose flagged rows are zeroed).
    """
    keep = targets != ignore_index
    bad = ref_flagged_rows(logits, temperature)
    flag = (bad & keep).unsqueeze(-1)
    # NaN, with d/dx = NaN towards every logit of a flagged kept row; the where() keeps the NaN of the product's
    # backward (upstream * NaN, even for a zero upstream) away from every other row
    poison = torch.where(flag, logits, torch.zeros_like(logits)).double().sum(-1) * float("nan")
    logits = torch.where(bad.unsqueeze(-1), torch.zeros_like(logits), logits)
    z = logits.double() / temperature
    logp = torch.log_softmax(z, dim=-1)
    safe = torch.where(keep, targets, torch.zeros_like(targets)).long()
    lp = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    p = logp.exp()
    # mask log p before the product so -inf columns give 0 (and a 0, not NaN, gradient)
    ent = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
    zero = torch.zeros_like(lp)
    lp, ent = torch.where(bad, poison, lp), torch.where(bad, poison, ent)
    return torch.where(keep, lp, zero), torch.where(keep, ent, zero)


def ref_linear_logits(hidden, weight, bias=None):
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    return z
