"""The first-step output check: every wrong return a plugin can make, and the exact message a
user sees for it. B = 3 sequences, T = 5 tokens (B != T, so a transpose is visible)."""

import pytest
import torch

from gbmpo.checks import PluginContractError, PluginOutputError, check_plugin_output

MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
WANT = ("divergence 'my_div': per_token() must return a floating torch.Tensor of shape (B, T) = "
        "(3, 5), the shape of view.mask; got ")


def message(tensor, kind="divergence", name="my_div", what="per_token") -> str:
    with pytest.raises(PluginOutputError) as info:
        check_plugin_output(kind, name, tensor, MASK, what)
    return str(info.value)


def test_a_correct_output_passes_and_the_error_is_a_contract_error():
    check_plugin_output("divergence", "my_div", torch.zeros(3, 5, requires_grad=True), MASK)
    check_plugin_output("divergence", "my_div", torch.zeros(3, 5, dtype=torch.bfloat16), MASK)
    assert issubclass(PluginOutputError, PluginContractError)


@pytest.mark.parametrize("shape, tail", [
    ((3, 6), "shape (3, 6), dtype torch.float32: 6 columns; T is the padded completion length, "
             "view.mask.shape[1]"),
    ((5,), "shape (5,), dtype torch.float32: one value per token position, not per sequence "
           "and token"),
    ((), "shape (), dtype torch.float32: a scalar; return one value per token and let the "
         "trainer aggregate"),
    ((3,), "shape (3,), dtype torch.float32: one value per sequence; expand it over the "
           "tokens, e.g. x_B[:, None].expand_as(view.logp)"),
    ((5, 3), "shape (5, 3), dtype torch.float32: the transpose of (B, T)"),
    ((3, 1), "shape (3, 1), dtype torch.float32: a broadcastable shape, not (B, T) itself; "
             "expand it with .expand_as(view.logp)"),
    ((3, 5, 11), "shape (3, 5, 11), dtype torch.float32: one value per vocabulary entry; "
                 "reduce the last dimension"),
])
def test_wrong_shapes_are_named_with_expected_and_actual(shape, tail):
    assert message(torch.zeros(shape)) == WANT + tail


def test_integer_dtype():
    assert message(torch.zeros(3, 5, dtype=torch.long)) == WANT + (
        "shape (3, 5), dtype torch.int64: not a floating dtype (compute in view.logp's dtype)")


def test_not_a_tensor():
    assert message(0.5) == WANT + "float"


def test_nan_where_the_mask_is_on_names_count_row_column_and_value():
    x = torch.zeros(3, 5)
    x[1, 1] = float("nan")
    x[2, 4] = float("-inf")
    assert message(x, "algorithm", "my_algo", "surrogate") == (
        "algorithm 'my_algo': surrogate() is not finite on 2 of 10 completion tokens (where "
        "view.mask is True); first at row 1, column 1: nan")


def test_non_finite_values_where_the_mask_is_off_are_allowed():
    x = torch.zeros(3, 5)
    x[~MASK] = float("nan")
    x[0, 4] = float("inf")
    check_plugin_output("divergence", "my_div", x, MASK)


def test_same_shape_transpose_is_the_documented_limit():
    """B == T: a (T, B) tensor has shape (B, T); the check cannot see it (see the module doc).
    This test pins the limit so that a change to it is deliberate."""
    square = torch.ones(4, 4, dtype=torch.bool)
    check_plugin_output("divergence", "my_div", torch.arange(16.0).reshape(4, 4).T, square)
