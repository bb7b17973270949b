"""A plain numpy reference of logits from int8-quantized activations."""

import numpy as np


def int8_logits_reference(x_ND: np.ndarray, codes_VD: np.ndarray, scale_V1: np.ndarray):
  """Logits from each row of x quantized to int8 on its own (max |x| / 127, in float32 as the
  model computes it), the product and scaling in float64: int8_product_reference against the
  table as a [D, V] kernel with one scale per column."""
  return int8_product_reference(x_ND, np.asarray(codes_VD).T, np.asarray(scale_V1).T)


def int8_product_reference(x_NK: np.ndarray, codes_KM: np.ndarray, scale_GM: np.ndarray):
  """x @ kernel for a kernel of integer codes [K, M] with scales per column and group of K / G
  rows, each row of x quantized to int8 on its own (max |x| / 127, in float32 as the model
  computes it); float64 sums."""
  x_NK = np.asarray(x_NK, np.float32)
  s_N1 = np.abs(x_NK).max(-1, keepdims=True) / np.float32(127)
  s_N1[s_N1 == 0] = 1
  q_NK = np.clip(np.round(x_NK / s_N1), -127, 127).astype(np.float64)
  g = scale_GM.shape[0]
  w_KM = np.asarray(codes_KM, np.float64) * np.repeat(np.asarray(scale_GM, np.float64),
                                                      codes_KM.shape[0] // g, axis=0)
  return (q_NK @ w_KM) * s_N1.astype(np.float64)
