"""Taylor rules of the ops models call, one module per family; :mod:`lamda_ext.taylor.op_table` registers them.

- :mod:`.factories`: one factory per family of rules with the same shape (elementwise kinds, shape ops on
  shifted dims, per-sample linear ops, reductions, piecewise-linear functions, dropout masks, primal-only ops,
  constant constructors).
- :mod:`.arithmetic`: sums, products, quotients, powers.
- :mod:`.activations`: activations beyond one elementwise kind, softmax, log-softmax.
- :mod:`.shape`: shape, layout and dtype ops.
- :mod:`.selection`: where, masks, indexed writes, embedding, max-pool, dropout.
- :mod:`.linear`: linear layers and convolutions.
- :mod:`.products`: matmul, its batched forms, einsum.
- :mod:`.norms`: batch norm, layer norm, ``F.normalize``.
- :mod:`.attention`: scaled dot-product and multi-head attention.

Degree tracking: linear maps, ReLU/leaky ReLU/abs, max-pool, dropout and eval-mode batch norm keep the degree D
of their input; products add degrees; smooth nonlinearities raise it to the run's order N. A constant operand
(plain tensor) is a series of degree 0.
"""
