"""Taylor rules of the ops models call, one module per family; `lamda_ext.taylor.op_table` registers them.

- [`factories`][lamda_ext.taylor.op_rules.factories]: one factory per family of rules with the same shape (elementwise
  kinds, shape ops on shifted dims, per-sample linear ops, reductions, piecewise-linear functions, dropout masks,
  primal-only ops, constant constructors).
- [`arithmetic`][lamda_ext.taylor.op_rules.arithmetic]: sums, products, quotients, powers.
- [`activations`][lamda_ext.taylor.op_rules.activations]: activations beyond one elementwise kind, softmax, log-softmax.
- [`shape`][lamda_ext.taylor.op_rules.shape]: shape, layout and dtype ops.
- [`selection`][lamda_ext.taylor.op_rules.selection]: where, masks, indexed writes, embedding, max-pool, dropout.
- [`linear`][lamda_ext.taylor.op_rules.linear]: linear layers and convolutions.
- [`products`][lamda_ext.taylor.op_rules.products]: matmul, its batched forms, einsum.
- [`norms`][lamda_ext.taylor.op_rules.norms]: batch norm, layer norm, ``F.normalize``.
- [`attention`][lamda_ext.taylor.op_rules.attention]: scaled dot-product and multi-head attention.

Degree tracking: linear maps, ReLU/leaky ReLU/abs, max-pool, dropout and eval-mode batch norm keep the degree D
of their input; products add degrees; smooth nonlinearities raise it to the run's order N. A constant operand
(plain tensor) is a series of degree 0.
"""
