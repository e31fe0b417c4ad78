"""segment_sums (with padded_segment_ids) vs hand-computed sums (padded and packed layouts) and a float64 loop reference."""
import pytest
import torch

from mpo_dist.data.packing import padded_segment_ids
from mpo_dist.kernels import segment_sums


def test_padded_batch_hand_computed():
    # 2 rows x 4 tokens; row 0 has response tokens at positions 1, 2; row 1 at positions 0, 1, 2
    values = torch.tensor([[0.0, -1.0, -2.0, 0.0], [-0.5, -0.25, -4.0, 0.0]])
    mask = torch.tensor([[False, True, True, False], [True, True, True, False]])
    ids = padded_segment_ids(mask).reshape(-1)
    assert ids.tolist() == [-1, 0, 0, -1, 1, 1, 1, -1]
    sums, counts = segment_sums(values.reshape(-1), ids, num_segments=2)
    assert sums.tolist() == [-3.0, -4.75]
    assert counts.tolist() == [2.0, 3.0]
    assert sums.dtype == counts.dtype == torch.float32


def test_packed_rows_hand_computed():
    # one packed row holding 3 sequences (ids 0, 1, 2) plus prompt/pad tokens (-1); a segment may be empty (id 3)
    values = torch.tensor([1.0, 2.0, 0.0, 4.0, 8.0, 0.0, 16.0, 0.0])
    ids = torch.tensor([0, 0, -1, 1, 1, -1, 2, -1])
    sums, counts = segment_sums(values, ids, num_segments=4)
    assert sums.tolist() == [3.0, 12.0, 16.0, 0.0]
    assert counts.tolist() == [2.0, 2.0, 1.0, 0.0]


def test_random_against_loop_reference_and_gradient():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(300, generator=gen).requires_grad_()
    ids = torch.randint(-1, 17, (300,), generator=gen)
    sums, counts = segment_sums(values, ids, num_segments=17)
    weights = torch.randn(17, generator=gen)
    (sums * weights).sum().backward()
    for segment in range(17):
        members = ids == segment
        torch.testing.assert_close(sums[segment].double(), values.detach()[members].double().sum(), atol=1e-5, rtol=0)
        assert counts[segment] == members.sum()
    expected_grad = torch.where(ids >= 0, weights[ids.clamp(min=0)], 0.0)  # d sum_s / d v_i = 1 if i in s
    torch.testing.assert_close(values.grad, expected_grad)


def test_empty_input():
    sums, counts = segment_sums(torch.zeros(0), torch.zeros(0, dtype=torch.long), num_segments=3)
    assert sums.tolist() == [0.0, 0.0, 0.0] and counts.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("values,ids,num_segments,message", [
    (torch.zeros(3), torch.tensor([0, 1, 2]), 2, "must lie in"),
    (torch.zeros(3), torch.tensor([0, -2, 1]), 2, "must lie in"),
    (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), 2, "1-D"),
    (torch.zeros(3), torch.zeros(4, dtype=torch.long), 2, "1-D"),
    (torch.zeros(3, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.long), 2, "float32 or float64"),
    (torch.zeros(3), torch.zeros(3, dtype=torch.int32), 2, "int64"),
])
def test_bad_input_is_rejected_clearly(values, ids, num_segments, message):
    with pytest.raises((ValueError, TypeError), match=message):
        segment_sums(values, ids, num_segments)

