"""One module per method, named after it.

Each module builds its method from the protocol in `randjax.reparam` (a
`Reparam`, an optax transformation whose state may be a
`randjax.reparam.Projection`, or both) and the toolkit in `randjax.tree`,
and registers its export codec with `randjax.export.register_codec`:

* `edge_popup`: Ramanujan et al., CVPR 2020 (top-k scores over frozen weights);
* `supermask`: Zhou et al., NeurIPS 2019 (Bernoulli mask logits);
* `slot_machine`: Aladago & Torresani, ICML 2021 (one of K random values);
* `laperm`: Qiu & Suda, NeurIPS 2020 (permutations of the initial weights);
* `lookahead`: Zhang et al., NeurIPS 2019 (the optimizer LaPerm is compared with);
* `masked`: training under fixed pruning masks (Frankle & Carbin, ICLR 2019;
  Mikler 2021), with the masks from `randjax.pruning`;
* `tom`: Training Optimal Masks (Mikler 2021): Bernoulli mask logits over
  briefly trained weights, the top ``density`` of them kept, then `masked`;
* `structured`: unit pruning without retraining by magnitude, frame
  potential or at random, and its accuracy curve (Heitmann).

Their constructors are re-exported at the top level (`randjax.edge_popup`,
`randjax.laperm`, ...); ``randjax.methods.<name>`` is the module, with the
method's helpers (e.g. `randjax.methods.laperm.synced_params`).
"""
