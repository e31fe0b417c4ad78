"""How much temporary memory the Triton head's backward takes, without importing Triton (the planner needs it too).

The backward materialises the grad-logit matrix one vocab chunk at a time and, for half dtypes, carries grad_hidden
as a (hi, lo) pair whose lo half is a temporary. Together they are held to TEMPORARY_BUDGET_BYTES; the rest of the
budget goes to the chunk, because wider chunks mean fewer passes over hi and lo (see logprob_triton's docstring).
"""
from __future__ import annotations

TEMPORARY_BUDGET_BYTES = 256 * 2**20  # grad-logit chunk + carried-sum residual + the small fp32 vectors
SMALL_TEMPORARIES_BYTES = 8 * 2**20  # reserve for the fp32 vectors (lse, bias partial sums, the forward's partials)
GRAD_LOGITS_MIN_BYTES = 64 * 2**20  # the grad-logit chunk's floor when N*H alone takes the budget (very large N)


def residual_bytes(num_rows: int, hidden: int, element_bytes: int) -> int:
    """The lo half of the carried grad_hidden sum: half dtypes only (fp32 accumulates in the output)."""
    return num_rows * hidden * element_bytes if element_bytes < 4 else 0


def grad_logits_budget_bytes(num_rows: int, hidden: int, element_bytes: int) -> int:
    """Bytes the grad-logit chunk [num_rows, chunk] may take."""
    left = TEMPORARY_BUDGET_BYTES - residual_bytes(num_rows, hidden, element_bytes) - SMALL_TEMPORARIES_BYTES
    return max(GRAD_LOGITS_MIN_BYTES, left)


def backward_temporary_bytes(num_rows: int, hidden: int, vocab: int, element_bytes: int) -> int:
    """The backward's residual plus its grad-logit chunk (at most the whole vocabulary wide); the fp32 vectors
    (a few x 4 B per row) are left out."""
    chunk = min(grad_logits_budget_bytes(num_rows, hidden, element_bytes), num_rows * vocab * element_bytes)
    return residual_bytes(num_rows, hidden, element_bytes) + chunk
